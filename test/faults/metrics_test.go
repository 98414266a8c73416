//go:build faults

package faults

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// TestFaultNATSRestartSeenByMetrics kills nats-server and starts it again
// on the same port and store: the component's /readyz goes from ready to
// not ready (naming NATS) and back, and its metrics count the reconnect.
func TestFaultNATSRestartSeenByMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store := t.TempDir()
	ns := procStartNATS(t, "nats-metrics", "-sd", store)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	comp := procNewComponent(t, faultSocketDir(t), "faults-metrics", "-metrics-addr", addr)
	comp.startServing(t, 30*time.Second)
	c := faultGRPC(t, comp.socket)
	if err := faultGRPCInit(ctx, c, "pubsub", map[string]string{"natsURL": ns.url(), "reconnectWait": "200ms"}); err != nil {
		t.Fatalf("Init: %v", err)
	}

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	reconnects := func() float64 {
		_, body := get("/metrics")
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			return -1
		}
		for _, m := range fams["jetstream_pubsub_reconnects_total"].GetMetric() {
			return m.GetCounter().GetValue()
		}
		return -1
	}
	waitReady := func(what string, want int) string {
		t.Helper()
		var body string
		natstest.AwaitT(t, 30*time.Second, what, func() error {
			var code int
			if code, body = get("/readyz"); code != want {
				return fmt.Errorf("/readyz answered %d (%s), want %d", code, strings.TrimSpace(body), want)
			}
			return nil
		})
		return body
	}
	waitReady("connected", http.StatusOK)
	if got := reconnects(); got != 0 {
		t.Fatalf("reconnects_total %v before the restart, want 0", got)
	}

	ns.Kill()
	down := time.Now()
	body := waitReady("NATS killed", http.StatusServiceUnavailable)
	if !strings.Contains(body, `instance "pubsub"`) || !strings.Contains(body, "NATS is") {
		t.Errorf("/readyz does not name the instance and NATS: %q", body)
	}
	t.Logf("not ready %s after the kill: %s", time.Since(down).Round(10*time.Millisecond), strings.TrimSpace(body))

	procStart(t, ns.Proc)
	ns.waitReady(t, 30*time.Second)
	up := time.Now()
	waitReady("NATS back", http.StatusOK)
	t.Logf("ready again %s after NATS came back", time.Since(up).Round(10*time.Millisecond))
	// nats.go calls the reconnect handler, which counts, on its own
	// goroutine after the connection reads as connected again: the count
	// may come a moment after /readyz says ready.
	natstest.AwaitT(t, 5*time.Second, "the reconnect counted", func() error {
		if got := reconnects(); got != 1 {
			return fmt.Errorf("reconnects_total %v after one restart, want 1", got)
		}
		return nil
	})
}
