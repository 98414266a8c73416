package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz (the process is alive) and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if problems := m.NotReady(); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintln(w, strings.Join(problems, "\n"))
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	return mux
}

// NotReady lists what keeps the component from being ready: a Component
// that daprd calls and this process never initialised, an instance that is
// not connected to NATS or refused the subscription on which JetStream's
// answers arrive, or a subscription that Ping reports as
// failing (see SubscriptionStats.Stuck): its error cannot be fixed by
// retrying, or has kept it from delivering for 10 s. A subscription that
// retries after a passing error, or waits on purpose (paused), is ready.
func (m *Metrics) NotReady() []string {
	var problems []string
	now := time.Now()
	for _, in := range m.instances() {
		who := fmt.Sprintf("instance %q (daprd %s)", in.Name, in.Daprd)
		if in.NotServing != "" {
			problems = append(problems, who+": "+in.NotServing)
			continue
		}
		if st := in.Stats.Connection.State; st != "connected" {
			if st == "" {
				st = "not connected yet"
			}
			problems = append(problems, fmt.Sprintf("%s: NATS is %s", who, st))
		} else if p := in.Stats.Connection.Problem; p != "" {
			problems = append(problems, who+": "+p)
		}
		for _, s := range in.Stats.Subscriptions {
			if s.Live > 0 && s.Stuck {
				problems = append(problems, fmt.Sprintf("%s: topic %q (consumer %s): %s (for %s)",
					who, s.Topic, s.Consumer, s.Problem, now.Sub(s.ProblemSince).Round(time.Second)))
			}
		}
	}
	return problems
}

// Serve serves Handler on addr until ctx is done.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
