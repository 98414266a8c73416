package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/metrics"
)

var metricName = regexp.MustCompile(metrics.Namespace + `_[a-z_]+`)

// Every metric the Grafana dashboard in deploy/ queries is one the
// component serves, and each panel queries at least one.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := os.ReadFile("../deploy/grafana/dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(raw, &dash))
	require.NotEmpty(t, dash.Panels)

	served := metrics.Names()
	check := func(where, expr string) int {
		found := metricName.FindAllString(expr, -1)
		for _, name := range found {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
			assert.Contains(t, served, base, "%s queries %s, which the component does not serve", where, name)
		}
		return len(found)
	}
	for _, p := range dash.Panels {
		n := 0
		for _, target := range p.Targets {
			n += check("panel "+p.Title, target.Expr)
		}
		assert.Positive(t, n, "panel %q queries none of the component's metrics", p.Title)
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			check("a dashboard variable", q)
		}
	}

	// And what Names lists is what a working instance serves.
	ns := natstest.Start(t)
	_, m := instrumented(t, ns.ClientURL(), nil)
	fams := scrape(t, m.Handler())
	for name := range fams {
		if strings.HasPrefix(name, metrics.Namespace+"_") {
			assert.True(t, slices.Contains(served, name), "%s is served but not in Names", name)
		}
	}
}
