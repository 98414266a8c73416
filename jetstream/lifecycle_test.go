package jetstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

func TestPing(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	require.NoError(t, ps.Ping(ctx(t)))
	require.NoError(t, ps.Ping(context.Background()), "Ping needs no deadline from its caller")

	natstest.Stop(ns)
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return ps.Ping(c) != nil
	}, waitShort, tick, "Ping still succeeds after the server stopped")
}

func TestInitBeforeServerStarts(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	ps, _ := open(t, url, map[string]string{"reconnectWait": "200ms", "consumerID": "early"})
	require.Error(t, ps.Ping(ctx(t)), "Ping must fail while NATS is not running")
	h, got := collect()
	subscribe(t, ps, "early", nil, h)

	time.Sleep(2 * time.Second) // NATS comes up a little later
	ns := natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return ps.Ping(c) == nil
	}, waitFor, tick, "the component did not connect once NATS started")

	publish(t, ps, "early", "hello", nil)
	m := recv(t, got, waitFor)
	assert.Equal(t, "hello", string(m.Data))
	_, js := natstest.Client(t, ns)
	settledConsumer(t, js, "early", "early-early")
}

func TestInitErrors(t *testing.T) {
	t.Parallel()
	url := "nats://127.0.0.1:1"
	for name, props := range map[string]map[string]string{
		"no natsURL":       {},
		"http natsURL":     {"natsURL": "http://localhost:4222"},
		"bad duration":     {"natsURL": url, "ackWait": "soon"},
		"bad bool":         {"natsURL": url, "autoProvision": "ture"},
		"maxInFlight zero": {"natsURL": url, "maxInFlight": "0"},
		"bad concurrency":  {"natsURL": url, "concurrency": "many"},
		"user w/o pass":    {"natsURL": url, "user": "u"},
	} {
		t.Run(name, func(t *testing.T) {
			ps, _ := newInstance(t)
			err := ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: props}})
			require.Error(t, err)
			assert.ErrorIs(t, err, metadata.ErrInvalid)
			assert.Equal(t, KindInvalid, KindOf(err))
			require.ErrorIs(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "x", Data: []byte("x")}), ErrNotInitialized)
			require.NoError(t, ps.Close())
		})
	}

	t.Run("missing credsFile", func(t *testing.T) {
		ps, _ := newInstance(t)
		missing := filepath.Join(t.TempDir(), "missing.creds")
		err := ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": url, "credsFile": missing}}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "credsFile")
		assert.ErrorIs(t, err, metadata.ErrInvalid)
		require.NoError(t, ps.Close())
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := newInstance(t)
	md := pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": ns.ClientURL(), "consumerID": "app"}}}
	require.NoError(t, ps.Init(t.Context(), md))
	t.Cleanup(func() { _ = ps.Close() })
	// A second Init leaves the instance as it is, and says what to do.
	require.ErrorContains(t, ps.Init(t.Context(), md), "to change its metadata, Close it and Init a new instance")

	// A subscription holding a message it never settles.
	held := make(chan *Delivery, 1)
	heldDone, err := ps.SubscribeDeliveries(context.Background(), pubsub.SubscribeRequest{Topic: "held"}, func(d *Delivery) error {
		held <- d
		return nil
	})
	require.NoError(t, err)
	// A subscription whose handler is busy when Close is called.
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	require.NoError(t, ps.Subscribe(context.Background(), pubsub.SubscribeRequest{Topic: "busy"}, func(context.Context, *pubsub.NewMessage) error {
		close(started)
		<-release
		finished.Store(true)
		return nil
	}))
	publish(t, ps, "held", "h", nil)
	publish(t, ps, "busy", "b", nil)
	d := recv(t, held, waitFor)
	closedWithin(t, started, waitFor, "the busy handler starting")

	closed := make(chan error, 1)
	go func() { closed <- ps.Close() }()
	nothing(t, closed, 300*time.Millisecond) // Close waits for the handler
	close(release)
	require.NoError(t, recv(t, closed, waitFor))
	assert.True(t, finished.Load(), "Close returned before the handler did")
	select {
	case <-heldDone:
	default:
		t.Fatal("Close returned before the subscription ended")
	}
	assert.True(t, d.Settled(), "the held message was given back")

	require.NoError(t, ps.Close(), "Close is idempotent")
	require.ErrorIs(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "held", Data: []byte("x")}), ErrClosed)
	require.ErrorIs(t, ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: "held"}, func(context.Context, *pubsub.NewMessage) error { return nil }), ErrClosed)
	require.ErrorIs(t, ps.Ping(ctx(t)), ErrClosed)

	// The busy message was acked; the held one was given back, so a plain
	// client gets it at once, long before the ack wait of 30s.
	busy := settledConsumer(t, js, "busy", "app-busy")
	assert.Equal(t, uint64(1), busy.AckFloor.Stream)
	cons, err := js.Consumer(ctx(t), "held", "app-held")
	require.NoError(t, err)
	batch, err := cons.Fetch(1, natsjs.FetchMaxWait(waitShort))
	require.NoError(t, err)
	msg := recv(t, batch.Messages(), waitShort)
	require.NotNil(t, msg)
	assert.Equal(t, "h", string(msg.Data()))
	meta, err := msg.Metadata()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), meta.NumDelivered)
	require.NoError(t, msg.DoubleAck(ctx(t)))
}

// Close while NATS is away returns soon: nothing can be withdrawn, handed
// back or flushed, so nothing is worth waiting for.
func TestCloseDuringAnOutage(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := newInstance(t)
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{
		"natsURL": px.url(), "consumerID": "app", "reconnectWait": "100ms", "priorityPolicy": "pinned",
	}}}))
	t.Cleanup(func() { _ = ps.Close() })
	h, got := collect()
	subscribe(t, ps, "closeout", nil, h)
	publish(t, ps, "closeout", "m", nil)
	recv(t, got, waitFor)

	px.cut()
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	start := time.Now()
	require.NoError(t, ps.Close())
	took := time.Since(start)
	t.Logf("Close took %s while NATS was away", took)
	assert.Less(t, took, 2500*time.Millisecond, "Close waited for NATS")
}

// Close while a BulkPublish waits for its acknowledgements: the call must
// end soon after Close returns, and report as failed only entries that were
// not stored, since the caller retries those (daprd answers 500 and the app
// publishes them again). An entry stored and reported failed is stored twice
// by that retry.
func TestCloseWhileBulkPublishing(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := newInstance(t)
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": ns.ClientURL()}}}))
	t.Cleanup(func() { _ = ps.Close() })
	publish(t, ps, "closebulk", "first", nil)
	const n = 3000
	entries := make([]pubsub.BulkMessageEntry, n)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprint(i), Event: []byte(fmt.Sprint(i)), ContentType: "text/plain"}
	}
	type result struct {
		resp pubsub.BulkPublishResponse
		err  error
		at   time.Time
	}
	res := make(chan result, 1)
	go func() {
		r, err := ps.BulkPublish(context.Background(), &pubsub.BulkPublishRequest{PubsubName: "test", Topic: "closebulk", Entries: entries})
		res <- result{r, err, time.Now()}
	}()
	// Entries are being stored: the BulkPublish is under way.
	require.Eventually(t, func() bool { c := count(js, "closebulk"); return c > 1 && c != ^uint64(0) }, waitFor, time.Millisecond)
	require.NoError(t, ps.Close())
	closed := time.Now()

	r := recv(t, res, 45*time.Second)
	stored := msgCount(t, js, "closebulk") - 1
	t.Logf("BulkPublish returned %s after Close did: %d of %d entries reported failed, %d stored; error: %v",
		r.at.Sub(closed).Round(10*time.Millisecond), len(r.resp.FailedEntries), n, stored, r.err)
	assert.Less(t, r.at.Sub(closed), waitShort, "BulkPublish kept waiting for acknowledgements after Close returned")
	assert.Equal(t, uint64(n-len(r.resp.FailedEntries)), stored,
		"entries reported failed were stored: %d stored, %d reported failed of %d", stored, len(r.resp.FailedEntries), n)
}

// cancelOnFirst returns a context that the first call of the handler
// cancels, and a channel that receives every call made after that.
func cancelOnFirst() (context.Context, func(), <-chan struct{}) {
	c, cancel := context.WithCancel(context.Background())
	late := make(chan struct{}, 1000)
	var calls atomic.Int32
	call := func() {
		if calls.Add(1) == 1 {
			cancel()
			return
		}
		late <- struct{}{}
	}
	return c, call, late
}

// endedAndUncalled waits for every subscription of ps to end, and fails
// the test if a handler was called meanwhile.
func endedAndUncalled(t *testing.T, ps *PubSub, late <-chan struct{}) {
	t.Helper()
	require.Eventually(t, func() bool {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		return len(ps.subs) == 0
	}, waitFor, tick, "the subscription did not end")
	require.Zero(t, len(late), "the handler was called after it cancelled the subscription")
}

// A handler that cancels its subscription's context is not called again:
// the app stops there, as after any cancel, and what it was not given goes
// to the next subscription of the durable.
func TestNoHandlerCallAfterCancel(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	const n = 20
	for i := range n {
		publish(t, ps, "aftercancel", fmt.Sprint(i), nil)
	}
	c, call, late := cancelOnFirst()
	require.NoError(t, ps.Subscribe(c, pubsub.SubscribeRequest{Topic: "aftercancel"}, func(context.Context, *pubsub.NewMessage) error {
		call()
		return nil
	}))

	endedAndUncalled(t, ps, late)
	h, got := collect()
	subscribe(t, ps, "aftercancel", nil, h)
	seen := map[string]bool{"0": true}
	for len(seen) < n {
		seen[string(recv(t, got, waitFor).Data)] = true
	}
}

// The same for BulkSubscribe: no batch reaches the handler after it
// cancelled its subscription's context.
func TestNoBulkHandlerCallAfterCancel(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	const n = 20
	for i := range n {
		publish(t, ps, "bulkaftercancel", fmt.Sprint(i), nil)
	}
	c, call, late := cancelOnFirst()
	one := pubsub.BulkSubscribeConfig{MaxMessagesCount: 1, MaxAwaitDurationMs: 10}
	require.NoError(t, ps.BulkSubscribe(c, pubsub.SubscribeRequest{Topic: "bulkaftercancel", BulkSubscribeConfig: one},
		func(context.Context, *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
			call()
			return nil, nil
		}))

	endedAndUncalled(t, ps, late)
	h, got := collect()
	subscribe(t, ps, "bulkaftercancel", nil, h)
	seen := map[string]bool{"0": true}
	for len(seen) < n {
		seen[string(recv(t, got, waitFor).Data)] = true
	}
}

// A Close made while another is under way returns once that one has
// finished, as the caller of either may exit the process then: nothing is
// still held or being drained.
func TestCloseDuringCloseWaitsForIt(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := newInstance(t)
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": ns.ClientURL(), "consumerID": "app"}}}))
	started, release := make(chan struct{}), make(chan struct{})
	require.NoError(t, ps.Subscribe(context.Background(), pubsub.SubscribeRequest{Topic: "closetwice"}, func(context.Context, *pubsub.NewMessage) error {
		close(started)
		<-release
		return nil
	}))
	publish(t, ps, "closetwice", "m", nil)
	closedWithin(t, started, waitFor, "the handler starting")

	first := make(chan error, 1)
	go func() { first <- ps.Close() }()
	require.Eventually(t, func() bool { return errors.Is(ps.Ping(ctx(t)), ErrClosed) }, waitShort, tick, "Close did not start")
	second := make(chan error, 1)
	go func() { second <- ps.Close() }()
	nothing(t, second, 300*time.Millisecond)
	close(release)
	require.NoError(t, recv(t, first, waitFor))
	require.NoError(t, recv(t, second, waitShort))
}

// Pause and Resume say when they cannot act, as the other calls do: a
// Resume after Close that returned nil would claim delivery goes on.
func TestPauseResumeOutsideTheLifetime(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := newInstance(t)
	require.ErrorIs(t, ps.Pause(ctx(t)), ErrNotInitialized)
	require.ErrorIs(t, ps.Resume(ctx(t)), ErrNotInitialized)
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": ns.ClientURL()}}}))
	require.NoError(t, ps.Pause(ctx(t)))
	require.NoError(t, ps.Resume(ctx(t)))
	require.NoError(t, ps.Close())
	require.ErrorIs(t, ps.Pause(ctx(t)), ErrClosed)
	require.ErrorIs(t, ps.Resume(ctx(t)), ErrClosed)
}

// A Resume while a cancelled subscription is still ending does not take it
// up again: its pull inbox is closed as it ends, not left subscribed until
// Close.
func TestResumeWhileASubscriptionEnds(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	publish(t, ps, "warm", "w", nil) // the connection's inbox for JetStream's answers
	before := ps.conn().NumSubscriptions()
	c, cancel := context.WithCancel(t.Context())
	started, release := make(chan struct{}), make(chan struct{})
	done, err := ps.SubscribeDeliveries(c, pubsub.SubscribeRequest{Topic: "ending"}, func(d *Delivery) error {
		close(started)
		go func() { <-release; _ = d.Ack() }()
		return nil
	})
	require.NoError(t, err)
	publish(t, ps, "ending", "m", nil)
	recv(t, started, waitFor)
	cancel()
	// Resumes throughout the end, its withdrawal of the pull included.
	for resumes := 0; ; resumes++ {
		if resumes == 20 {
			close(release)
		}
		require.NoError(t, ps.Resume(t.Context()))
		select {
		case <-done:
		case <-time.After(tick):
			continue
		}
		break
	}
	require.Eventually(t, func() bool { return ps.conn().NumSubscriptions() == before }, waitShort, tick,
		"the ended subscription's pull inbox is still subscribed")
}

// A second handler for a topic on the same durable of one instance would
// silently get only some of its messages, shared with the first as between
// replicas: it is refused, naming the consumer and the fix. With its own
// consumerID it gets every message too, and once the first subscription is
// cancelled, the durable can be subscribed again.
func TestSecondHandlerOnOneDurableIsRefused(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	c, cancel := context.WithCancel(t.Context())
	h1, got1 := collect()
	require.NoError(t, ps.Subscribe(c, pubsub.SubscribeRequest{Topic: "twohandlers"}, h1))

	h2, got2 := collect()
	err := ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "twohandlers"}, h2)
	require.ErrorIs(t, err, ErrInvalidRequest)
	assert.Equal(t, KindInvalid, KindOf(err))
	for _, want := range []string{`"twohandlers"`, `"app-twohandlers"`, "consumerID"} {
		assert.Contains(t, err.Error(), want)
	}
	bulk := func(context.Context, *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		return nil, nil
	}
	require.ErrorIs(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{Topic: "twohandlers"}, bulk), ErrInvalidRequest)

	subscribe(t, ps, "twohandlers", map[string]string{"consumerID": "audit"}, h2)
	const n = 10
	for i := range n {
		publish(t, ps, "twohandlers", fmt.Sprint(i), nil)
	}
	for range n {
		recv(t, got1, waitFor)
		recv(t, got2, waitFor)
	}

	cancel()
	h3, got3 := collect()
	subscribe(t, ps, "twohandlers", nil, h3)
	publish(t, ps, "twohandlers", "after", nil)
	assert.Equal(t, "after", string(recv(t, got3, waitFor).Data))
}
