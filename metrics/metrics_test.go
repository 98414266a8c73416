package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 15 * time.Second

// scrape fetches /metrics from h and parses it as Prometheus does.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	require.NoError(t, err)
	return fams
}

// value is the value of the sample of family name whose labels include
// want; -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[metrics.Namespace+"_"+name]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

// instrumented is a PubSub on a real nats-server whose metrics m serves.
func instrumented(t *testing.T, url string, props map[string]string) (*jetstream.PubSub, *metrics.Metrics) {
	t.Helper()
	ps := jetstream.New(logger.NewLogger("metrics-test"))
	m := metrics.New()
	ps.SetPublishObserver(m.Publishes("pubsub", "0"))
	m.SetSource(func() []metrics.Instance {
		return []metrics.Instance{{Name: "pubsub", Daprd: "0", Stats: ps.Stats()}}
	})
	md := map[string]string{"natsURL": url}
	for k, v := range props {
		md[k] = v
	}
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Name: "pubsub", Properties: md}}))
	t.Cleanup(func() { _ = ps.Close() })
	return ps, m
}

// The metrics follow the component's work: N publishes give N PubAcks, a
// failed delivery shows one NAK and one redelivery, and the consumer's
// pending count falls as a backlog drains.
func TestMetricsFollowTheWork(t *testing.T) {
	ns := natstest.Start(t)
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "maxInFlight": "5"})
	h := m.Handler()
	ctx := t.Context()

	const n = 25
	for i := range n {
		require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{Topic: "orders", Data: []byte(fmt.Sprint(i))}))
	}
	fams := scrape(t, h)
	topic := map[string]string{"instance": "pubsub", "daprd": "0", "topic": "orders"}
	assert.Equal(t, float64(n), value(fams, "publish_total", with(topic, "outcome", "ok")))
	assert.Equal(t, float64(n), value(fams, "puback_seconds", with(topic, "outcome", "ok")), "one PubAck latency per publish")
	assert.Equal(t, 1.0, value(fams, "connection_state", map[string]string{"state": "connected"}))
	assert.Equal(t, 0.0, value(fams, "connection_state", map[string]string{"state": "reconnecting"}))
	assert.Equal(t, 1.0, value(fams, "server_info", nil))

	// A backlog drains through a gate; the first message fails once.
	gate := make(chan struct{})
	var failedOnce atomic.Bool
	var handled atomic.Int32
	require.NoError(t, ps.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "orders"}, func(ctx context.Context, msg *pubsub.NewMessage) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		if string(msg.Data) == "0" && failedOnce.CompareAndSwap(false, true) {
			return errors.New("first attempt fails")
		}
		handled.Add(1)
		return nil
	}))
	sub := with(topic, "consumer", "app-orders")
	require.Eventually(t, func() bool {
		f := scrape(t, h)
		return value(f, "held_messages", sub) == 5 && value(f, "consumer_pending_messages", sub) >= n-5-1
	}, waitFor, 50*time.Millisecond, "the backlog is not visible")
	fams = scrape(t, h)
	before := value(fams, "consumer_pending_messages", sub)
	assert.Equal(t, 5.0, value(fams, "max_in_flight", sub))
	assert.Greater(t, value(fams, "oldest_held_seconds", sub), 0.0)
	t.Logf("pending before the drain: %v", before)
	close(gate)
	require.Eventually(t, func() bool { return handled.Load() == n }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		f := scrape(t, h)
		return value(f, "consumer_pending_messages", sub) == 0 && value(f, "consumer_ack_pending_messages", sub) == 0 && value(f, "held_messages", sub) == 0
	}, waitFor, 100*time.Millisecond, "num_pending did not fall to 0")
	fams = scrape(t, h)
	assert.Equal(t, 1.0, value(fams, "naks_total", sub))
	assert.Equal(t, 1.0, value(fams, "redeliveries_total", sub))
	assert.Equal(t, float64(n), value(fams, "acks_total", sub))
	assert.Equal(t, float64(n+1), value(fams, "deliveries_total", sub))
}

// /healthz says the process is alive; /readyz says whether NATS is
// connected, and names what is not.
func TestReadiness(t *testing.T) {
	ns := natstest.Start(t)
	_, m := instrumented(t, ns.ClientURL(), map[string]string{"reconnectWait": "100ms"})
	h := m.Handler()
	code, _ := get(t, h, "/healthz")
	assert.Equal(t, http.StatusOK, code)
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusOK }, waitFor, 20*time.Millisecond)

	natstest.Stop(ns)
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusServiceUnavailable }, waitFor, 20*time.Millisecond)
	_, body := get(t, h, "/readyz")
	assert.Contains(t, body, `instance "pubsub"`)
	assert.Contains(t, body, "NATS is reconnecting")
	code, _ = get(t, h, "/healthz")
	assert.Equal(t, http.StatusOK, code, "alive while NATS is away")
	// nats.go reports the disconnect through its callback goroutine, which
	// may run after the status has already changed.
	require.Eventually(t, func() bool { return value(scrape(t, h), "disconnects_total", nil) >= 1 }, waitFor, 20*time.Millisecond)
	assert.Equal(t, 1.0, value(scrape(t, h), "connection_state", map[string]string{"state": "reconnecting"}))
}

// A subscription stuck on an error that retrying cannot fix makes the
// component not ready, and /readyz names it.
func TestReadinessNamesAStuckSubscription(t *testing.T) {
	ns := natstest.Start(t)
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamRetention": "workqueue"})
	h := m.Handler()
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "jobs", Metadata: map[string]string{"deliverPolicy": "new"}},
		func(context.Context, *pubsub.NewMessage) error { return nil }))
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusServiceUnavailable }, waitFor, 20*time.Millisecond)
	_, body := get(t, h, "/readyz")
	assert.Contains(t, body, `topic "jobs"`)
	assert.Contains(t, body, "workqueue")
}

func with(base map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(base)+len(kv)/2)
	for k, v := range base {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// An operator deletes the stream of a subscribed topic while
// autoProvision is off: the subscription cannot deliver and retries in the
// background. Ping (healthcheck -nats) fails with it after 10 s, and the
// docs (troubleshooting.md, "Ping, healthcheck -nats or the readiness probe
// fails with ...") say the readiness probe, /readyz in the manifests, fails
// with it too, naming the topic; once the operator creates a stream for
// the topic again, it is ready again.
func TestReadinessNamesASubscriptionWhoseStreamIsGone(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	_, err := js.CreateStream(t.Context(), natsjs.StreamConfig{Name: "BYSTANDER", Subjects: []string{"bystander"}})
	require.NoError(t, err)
	_, err = js.CreateStream(t.Context(), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders"}})
	require.NoError(t, err)
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "autoProvision": "false"})
	h := m.Handler()
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "orders"},
		func(context.Context, *pubsub.NewMessage) error { return nil }))
	natstest.WaitConsumer(t, js, "ORDERS", "app-orders")
	code, body := get(t, h, "/readyz")
	require.Equal(t, http.StatusOK, code, body)

	require.NoError(t, js.DeleteStream(t.Context(), "ORDERS"))
	// Ping reports the subscription once the problem lasted 10 s.
	var pingErr error
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		pingErr = ps.Ping(c)
		return pingErr != nil
	}, 2*waitFor, 100*time.Millisecond, "Ping never reported the subscription whose stream is gone")
	t.Logf("Ping: %v", pingErr)
	code, body = get(t, h, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code, "/readyz answers %d %q while Ping fails with %q", code, body, pingErr)
	assert.Contains(t, body, `topic "orders"`)

	_, err = js.CreateStream(t.Context(), natsjs.StreamConfig{Name: "ORDERS2", Subjects: []string{"orders"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusOK }, waitFor, 20*time.Millisecond,
		"not ready after the operator created a stream for the topic")
}

// The NATS user may not create the subscription's consumer (its publish
// permissions deny $JS.API.CONSUMER.CREATE.>): retrying cannot fix that,
// only an operator who grants the permission. /readyz must name the topic
// and say that permission is missing, as Ping's error must; instead each
// attempt waits 5 s for an answer that never comes and the subscription
// reports "context deadline exceeded", which Ping repeats after 10 s while
// /readyz stays ready.
func TestReadinessNamesASubscriptionDeniedPermission(t *testing.T) {
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"}},
		}}}
	})
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "user": "app", "password": "pw"})
	h := m.Handler()
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "orders"},
		func(context.Context, *pubsub.NewMessage) error { return nil }))
	var pingErr error
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		pingErr = ps.Ping(c)
		return pingErr != nil
	}, 2*waitFor, 100*time.Millisecond, "Ping never reported the subscription that may not create its consumer")
	t.Logf("Ping: %v", pingErr)
	assert.Contains(t, strings.ToLower(pingErr.Error()), "permission", "Ping does not say what is wrong")
	code, body := get(t, h, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code, "/readyz answers %d %q while Ping fails with %q", code, body, pingErr)
	assert.Contains(t, body, `topic "orders"`)
	assert.Contains(t, strings.ToLower(body), "permission")
}

// A component that starts before nats-server (a pod scheduled before NATS
// is up) connects for the first time once NATS starts: the log says
// "connected", not "reconnected", and reconnects_total, "reconnections"
// in docs/observability.md, must stay 0 until a connection is lost and
// made again. An alert on its increase would otherwise fire for every pod
// that merely started first.
func TestReconnectsNotCountedForTheFirstConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	_, m := instrumented(t, fmt.Sprintf("nats://127.0.0.1:%d", port), map[string]string{"reconnectWait": "100ms"})
	h := m.Handler()
	code, _ := get(t, h, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, 0.0, value(scrape(t, h), "reconnects_total", nil))

	natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusOK }, waitFor, 20*time.Millisecond)
	assert.Equal(t, 0.0, value(scrape(t, h), "reconnects_total", nil), "reconnects_total counts the first connection")
}

// A subscription of a durable ends while its handler holds messages (the
// app did not handle them): they wait, kept alive, for the next
// subscription of the durable, and the consumer still has them
// ack-pending. The series of that topic and consumer stay, so what they
// read must stay true: consumer_ack_pending_messages is the consumer's
// num_ack_pending, and held_messages counts messages "waiting for" daprd
// and not yet settled. They must not read 0 while the consumer has 3
// messages ack-pending that the component keeps for the next subscription.
func TestGaugesStayTrueAfterASubscriptionEnds(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "3", "concurrency": "parallel"})
	h := m.Handler()
	subCtx, endSub := context.WithCancel(t.Context())
	var got atomic.Int32
	require.NoError(t, ps.Subscribe(subCtx, pubsub.SubscribeRequest{Topic: "orders"}, func(ctx context.Context, _ *pubsub.NewMessage) error {
		got.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}))
	natstest.WaitConsumer(t, js, "orders", "app-orders")
	for i := range 3 {
		require.NoError(t, ps.Publish(t.Context(), &pubsub.PublishRequest{Topic: "orders", Data: []byte(fmt.Sprint(i))}))
	}
	sub := map[string]string{"topic": "orders", "consumer": "app-orders"}
	require.Eventually(t, func() bool {
		f := scrape(t, h)
		return got.Load() == 3 && value(f, "held_messages", sub) == 3 && value(f, "consumer_ack_pending_messages", sub) == 3
	}, waitFor, 20*time.Millisecond, "the app did not get the 3 messages")

	endSub()
	require.Eventually(t, func() bool { return value(scrape(t, h), "subscriptions", sub) == 0 }, waitFor, 20*time.Millisecond, "the subscription did not end")
	cons, err := js.Consumer(t.Context(), "orders", "app-orders")
	require.NoError(t, err)
	info, err := cons.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, 3, info.NumAckPending, "the consumer no longer has the 3 messages ack-pending")
	f := scrape(t, h)
	if v := value(f, "consumer_ack_pending_messages", sub); v != -1 {
		assert.Equal(t, float64(info.NumAckPending), v, "consumer_ack_pending_messages after the subscription ended")
	}
	if v := value(f, "held_messages", sub); v != -1 {
		assert.Equal(t, 3.0, v, "held_messages after the subscription ended, while its 3 messages wait for the next one")
	}
}

// in_progress_total counts "the keep-alives sent". While NATS is away, the
// keep-alives of a message the app holds wait in the component, one per
// message, until NATS is back: the counter must follow what reaches
// JetStream, not each keep-alive that came due while none could be sent.
func TestInProgressCountsKeepAlivesSentThroughAnOutage(t *testing.T) {
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	port := ns.Addr().(*net.TCPAddr).Port
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackWait": "1s", "reconnectWait": "1s"})
	h := m.Handler()
	release := make(chan struct{})
	defer close(release)
	var got atomic.Int32
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "orders"}, func(ctx context.Context, _ *pubsub.NewMessage) error {
		got.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}))
	sub := map[string]string{"topic": "orders", "consumer": "app-orders"}
	require.Eventually(t, func() bool { return value(scrape(t, h), "subscriptions", sub) == 1 }, waitFor, 20*time.Millisecond)
	require.NoError(t, ps.Publish(t.Context(), &pubsub.PublishRequest{Topic: "orders", Data: []byte("slow")}))
	require.Eventually(t, func() bool { return got.Load() == 1 }, waitFor, 20*time.Millisecond)

	// A plain client sees each keep-alive the component sends.
	// It comes back from the outage before the component does.
	nc, err := nats.Connect(ns.ClientURL(), nats.ReconnectWait(20*time.Millisecond), nats.ReconnectJitter(0, 0), nats.MaxReconnects(-1))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	var seen atomic.Int64
	_, err = nc.Subscribe("$JS.ACK.>", func(msg *nats.Msg) {
		if strings.HasPrefix(string(msg.Data), "+WPI") {
			seen.Add(1)
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	require.Eventually(t, func() bool { return seen.Load() >= 1 }, waitFor, 20*time.Millisecond, "no keep-alive before the outage")

	counted := func() float64 { return value(scrape(t, h), "in_progress_total", sub) }
	c0, s0 := counted(), seen.Load()
	natstest.Stop(ns)
	require.Eventually(t, func() bool {
		return value(scrape(t, h), "connection_state", map[string]string{"state": "reconnecting"}) == 1
	}, waitFor, 20*time.Millisecond)
	// With an ackWait of 1s a keep-alive comes due every half second; one
	// waits for NATS, the others are never sent.
	assert.Never(t, func() bool { return counted()-c0 > 2 }, 6*time.Second, 20*time.Millisecond,
		"in_progress_total rises while NATS is away and no keep-alive can be sent")
	o := opts.Clone()
	o.Port = port
	ns = natstest.Run(t, o)
	t.Cleanup(func() { natstest.Stop(ns) })
	require.Eventually(t, func() bool { return seen.Load() > s0 }, waitFor, 20*time.Millisecond, "no keep-alive after NATS came back")
	// Both go on together once NATS is back: at some moment the counter's
	// rise equals what JetStream received, unless it counted keep-alives
	// that were never sent.
	caughtUp := assert.Eventually(t, func() bool {
		return counted()-c0 <= float64(seen.Load()-s0)
	}, 5*time.Second, 20*time.Millisecond)
	if !caughtUp {
		t.Errorf("in_progress_total rose by %v across the outage while %d keep-alives reached NATS", counted()-c0, seen.Load()-s0)
	}
}

// The NATS user may no longer read the consumer's info
// ($JS.API.CONSUMER.INFO is denied): the consumer gauges go rather than
// show an old figure, and must stay gone while the permission is missing,
// also when a later read fails for another reason (NATS away a moment):
// that read learnt nothing new either.
func TestConsumerGaugesStayGoneWhileTheConsumerCannotBeRead(t *testing.T) {
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "pw"}}
		opts = o
	})
	port := ns.Addr().(*net.TCPAddr).Port
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"consumerID": "app", "user": "app", "password": "pw", "maxInFlight": "2",
		"concurrency": "parallel", "reconnectWait": "100ms"})
	h := m.Handler()
	release := make(chan struct{})
	defer close(release)
	var got atomic.Int32
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "orders"}, func(ctx context.Context, _ *pubsub.NewMessage) error {
		got.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}))
	sub := map[string]string{"topic": "orders", "consumer": "app-orders"}
	require.Eventually(t, func() bool { return value(scrape(t, h), "subscriptions", sub) == 1 }, waitFor, 20*time.Millisecond)
	for i := range 4 {
		require.NoError(t, ps.Publish(t.Context(), &pubsub.PublishRequest{Topic: "orders", Data: []byte(fmt.Sprint(i))}))
	}
	require.Eventually(t, func() bool { return got.Load() == 2 }, waitFor, 20*time.Millisecond)
	require.Eventually(t, func() bool { return value(scrape(t, h), "consumer_ack_pending_messages", sub) == 2 }, waitFor, 50*time.Millisecond)
	// The operator takes the permission away.
	denied := opts.Clone()
	denied.Users = []*server.User{{Username: "app", Password: "pw", Permissions: &server.Permissions{
		Publish: &server.SubjectPermission{Deny: []string{"$JS.API.CONSUMER.INFO.>"}},
	}}}
	require.NoError(t, ns.ReloadOptions(denied))
	gone := func() bool {
		f := scrape(t, h)
		return value(f, "consumer_pending_messages", sub) == -1 && value(f, "consumer_ack_pending_messages", sub) == -1
	}
	require.Eventually(t, gone, waitFor, 50*time.Millisecond, "the consumer gauges stay while the consumer cannot be read")

	// NATS goes away a moment, and comes back with the same permissions.
	natstest.Stop(ns)
	require.Eventually(t, func() bool {
		return value(scrape(t, h), "connection_state", map[string]string{"state": "reconnecting"}) == 1
	}, waitFor, 20*time.Millisecond)
	require.Never(t, func() bool { return !gone() }, 4*time.Second, 50*time.Millisecond,
		"the consumer gauges came back, with the figures from before the denial, while NATS is away")
	o := denied.Clone()
	o.Port = port
	ns = natstest.Run(t, o)
	t.Cleanup(func() { natstest.Stop(ns) })
	require.Eventually(t, func() bool {
		return value(scrape(t, h), "connection_state", map[string]string{"state": "connected"}) == 1
	}, waitFor, 20*time.Millisecond)
	require.Never(t, func() bool { return !gone() }, 8*time.Second, 50*time.Millisecond,
		"the consumer gauges came back, with the figures from before the denial, while the consumer still cannot be read")
}

// An operator takes from the NATS user its permission to subscribe to
// _INBOX.>: NATS removes the subscription on which nats.go receives
// JetStream's answers, and no publish can be confirmed, on a connection that
// is up. /readyz names it; once the permission is back, the component is
// ready again.
func TestReadinessNamesRefusedReplies(t *testing.T) {
	users := func(p *server.Permissions) []*server.User {
		return []*server.User{{Username: "app", Password: "secret", Permissions: p}}
	}
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { o.Users, opts = users(nil), o })
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret"})
	h := m.Handler()
	require.NoError(t, ps.Publish(t.Context(), &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "orders", Data: []byte("x")}))
	code, body := get(t, h, "/readyz")
	require.Equal(t, http.StatusOK, code, body)

	denied := opts.Clone()
	denied.Users = users(&server.Permissions{Subscribe: &server.SubjectPermission{Deny: []string{"_INBOX.>"}}})
	require.NoError(t, ns.ReloadOptions(denied))
	require.Eventually(t, func() bool {
		code, body := get(t, h, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "subscribe permission for _INBOX.>")
	}, waitFor, 20*time.Millisecond, "/readyz does not name the refused subscription for JetStream's answers")

	allowed := opts.Clone()
	allowed.Users = users(nil)
	require.NoError(t, ns.ReloadOptions(allowed))
	require.Eventually(t, func() bool { code, _ := get(t, h, "/readyz"); return code == http.StatusOK }, waitFor, 20*time.Millisecond,
		"not ready after the permission is back")
	require.NoError(t, ps.Publish(t.Context(), &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "orders", Data: []byte("y")}))
}

// An app that publishes to a topic per entity (orders.<id>, idiomatic on
// NATS) keeps the publish series bounded: the first topics keep their own
// label, and the rest count together under jetstream.OtherTopics, so that
// neither the scrape nor the component's memory grows with every new topic.
func TestPublishSeriesStayBoundedForATopicPerEntity(t *testing.T) {
	ns := natstest.Start(t)
	ps, m := instrumented(t, ns.ClientURL(), map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.>"})
	ctx := t.Context()

	n := 3 * jetstream.MaxPublishTopics
	for i := range n {
		require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{Topic: fmt.Sprintf("orders.%d", i), Data: []byte("x")}))
	}
	// The same Component initialised again counts on within the same bound.
	again := jetstream.New(logger.NewLogger("metrics-test"))
	again.SetPublishObserver(m.Publishes("pubsub", "0"))
	require.NoError(t, again.Init(ctx, pubsub.Metadata{Base: contribmd.Base{Name: "pubsub", Properties: map[string]string{"natsURL": ns.ClientURL(), "streamName": "ORDERS", "streamSubjects": "orders.>"}}}))
	t.Cleanup(func() { _ = again.Close() })
	again.ContinueCounts(ps)
	m.SetSource(func() []metrics.Instance {
		return []metrics.Instance{{Name: "pubsub", Daprd: "0", Stats: again.Stats()}}
	})
	for _, topic := range []string{"orders.0", "orders.new"} {
		require.NoError(t, again.Publish(ctx, &pubsub.PublishRequest{Topic: topic, Data: []byte("x")}))
	}
	n += 2

	fams := scrape(t, m.Handler())
	labelled := func(name string) (topics map[string]float64) {
		topics = map[string]float64{}
		for _, s := range fams[metrics.Namespace+"_"+name].GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "topic" {
					topics[l.GetValue()] = value(fams, name, map[string]string{"topic": l.GetValue(), "outcome": "ok"})
				}
			}
		}
		return topics
	}
	for _, name := range []string{"publish_total", "puback_seconds"} {
		topics := labelled(name)
		assert.Equal(t, jetstream.MaxPublishTopics+1, len(topics), "%s: one series per topic up to the bound, and one for the rest", name)
		assert.Equal(t, 2.0, topics["orders.0"], name)
		assert.Equal(t, float64(n-jetstream.MaxPublishTopics-1), topics[jetstream.OtherTopics], name)
		var sum float64
		for _, v := range topics {
			sum += v
		}
		assert.Equal(t, float64(n), sum, "%s: every publish counted once", name)
	}
	assert.Equal(t, jetstream.MaxPublishTopics+1, len(again.Stats().Publish))
}
