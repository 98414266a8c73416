package jetstream

import (
	"context"
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
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{"natsURL": ns.ClientURL(), "consumerID": "app"}}}))
	t.Cleanup(func() { _ = ps.Close() })

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
