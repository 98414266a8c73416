package jetstream

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A misspelt key would otherwise go unnoticed: the field it meant keeps its
// default.
func TestInitWarnsOfUnknownMetadataKeys(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)

	_, buf := open(t, ns.ClientURL(), map[string]string{
		"durableNmae": "orders", "xyzzy": "1", "consumerID": "app", "ACKWAIT": "10s", "allowedTopics": "a,b",
	})
	var warnings []string
	for line := range strings.Lines(buf.String()) {
		if strings.Contains(line, "not known") {
			warnings = append(warnings, line)
		}
	}
	if assert.Len(t, warnings, 1, "one warning per Init, listing every unknown key") {
		w := warnings[0]
		assert.Contains(t, w, "level=warn")
		for _, s := range []string{"durableNmae", "did you mean", "durableName", "xyzzy", "case-insensitive", "metadata.yaml"} {
			assert.Contains(t, w, s)
		}
		for _, known := range []string{"consumerID", "ACKWAIT", "allowedTopics"} {
			assert.NotContains(t, w, known)
		}
	}

	_, quiet := open(t, ns.ClientURL(), map[string]string{"durableName": "orders", "consumerID": "app"})
	assert.NotContains(t, quiet.String(), "not known")
}
