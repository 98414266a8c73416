package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type delivered struct {
	data       string
	seq        string
	deliveries string
	at         time.Time
}

// failing is a handler that fails the first `fail` deliveries of each message
// and records every delivery.
func failing(fail int) (pubsub.Handler, chan delivered) {
	ch := make(chan delivered, 100)
	var mu sync.Mutex
	seen := map[string]int{}
	return func(_ context.Context, m *pubsub.NewMessage) error {
		ch <- delivered{string(m.Data), m.Metadata[MetadataSequence], m.Metadata[MetadataDeliveries], time.Now()}
		mu.Lock()
		defer mu.Unlock()
		seen[string(m.Data)]++
		if seen[string(m.Data)] <= fail {
			return errors.New("handler failed")
		}
		return nil
	}, ch
}

func TestHandlerErrorRedelivers(t *testing.T) {
	t.Parallel()
	for _, concurrency := range []string{"single", "parallel"} {
		t.Run(concurrency, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "concurrency": concurrency})
			h, got := failing(1)
			subscribe(t, ps, "retry", nil, h)
			publish(t, ps, "retry", "x", nil)

			first := recv(t, got, waitFor)
			assert.Equal(t, "1", first.deliveries)
			second := recv(t, got, waitFor)
			assert.Equal(t, "x", second.data)
			assert.Equal(t, first.seq, second.seq)
			assert.Equal(t, "2", second.deliveries)
			info := settledConsumer(t, js, "retry", "app-retry")
			assert.Equal(t, uint64(2), info.Delivered.Consumer)
		})
	}
}

func TestNakDelay(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "nakDelay": "1s"})
	h, got := failing(1)
	subscribe(t, ps, "nak", nil, h)
	publish(t, ps, "nak", "x", nil)

	first := recv(t, got, waitFor)
	second := recv(t, got, waitFor)
	assert.Equal(t, "2", second.deliveries)
	assert.GreaterOrEqual(t, second.at.Sub(first.at), 900*time.Millisecond, "redelivered before nakDelay")
}

func TestBackOffIsNakDelay(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "backOff": "1s,2s", "maxDeliver": "5"})
	h, got := failing(2)
	subscribe(t, ps, "backoff", nil, h)
	publish(t, ps, "backoff", "x", nil)

	d1 := recv(t, got, waitFor)
	d2 := recv(t, got, waitFor)
	d3 := recv(t, got, waitFor)
	assert.Equal(t, "3", d3.deliveries)
	assert.GreaterOrEqual(t, d2.at.Sub(d1.at), 900*time.Millisecond, "first redelivery before backOff[0]")
	assert.GreaterOrEqual(t, d3.at.Sub(d2.at), 1900*time.Millisecond, "second redelivery before backOff[1]")
}

// concurrencyProbe is a handler that records how many instances of itself run
// at once.
type concurrencyProbe struct {
	cur, peak atomic.Int32
	done      chan string
	work      time.Duration
}

func (p *concurrencyProbe) handle(_ context.Context, m *pubsub.NewMessage) error {
	n := p.cur.Add(1)
	for {
		old := p.peak.Load()
		if n <= old || p.peak.CompareAndSwap(old, n) {
			break
		}
	}
	time.Sleep(p.work) // simulated work
	p.cur.Add(-1)
	p.done <- string(m.Data)
	return nil
}

func TestConcurrency(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		props    map[string]string
		min, max int32
	}{
		{"parallel bounded by maxInFlight", map[string]string{"concurrency": "parallel", "maxInFlight": "3"}, 2, 3},
		{"single one at a time", map[string]string{"concurrency": "single"}, 1, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ns, _ := startNATS(t)
			props := map[string]string{"consumerID": "app", "deliverPolicy": "all"}
			for k, v := range c.props {
				props[k] = v
			}
			ps, _ := open(t, ns.ClientURL(), props)
			const n = 12
			for i := range n {
				publish(t, ps, "conc", fmt.Sprintf("m%d", i), nil)
			}
			p := &concurrencyProbe{done: make(chan string, n), work: 100 * time.Millisecond}
			subscribe(t, ps, "conc", nil, p.handle)
			for range n {
				recv(t, p.done, waitFor)
			}
			assert.LessOrEqual(t, p.peak.Load(), c.max)
			assert.GreaterOrEqual(t, p.peak.Load(), c.min)
		})
	}
}

func TestSlowHandlerKeptAlive(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackWait": "1s"})
	var calls atomic.Int32
	done := make(chan string, 10)
	subscribe(t, ps, "slow", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		calls.Add(1)
		time.Sleep(3 * time.Second) // three times the ack wait
		done <- m.Metadata[MetadataDeliveries]
		return nil
	})
	publish(t, ps, "slow", "x", nil)

	assert.Equal(t, "1", recv(t, done, waitFor))
	info := settledConsumer(t, js, "slow", "app-slow")
	assert.Equal(t, uint64(1), info.Delivered.Consumer, "the message was redelivered while being worked on")
	assert.Zero(t, info.NumRedelivered)
	assert.Equal(t, int32(1), calls.Load())
}

func TestSubscribeDeliveriesAck(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	got := make(chan *Delivery, 10)
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "explicit"}, func(d *Delivery) error {
		got <- d
		return nil
	})
	require.NoError(t, err)
	publish(t, ps, "explicit", "x", map[string]string{"k": "v"})

	d := recv(t, got, waitFor)
	assert.Equal(t, "x", string(d.Data))
	assert.Equal(t, "explicit", d.Topic)
	assert.Equal(t, "v", d.Metadata["k"])
	assert.Equal(t, uint64(1), d.Sequence)
	assert.Equal(t, uint64(1), d.Deliveries)
	assert.False(t, d.Settled())

	info, err := consumerInfo(js, "explicit", "app-explicit")
	require.NoError(t, err)
	require.NotNil(t, info)
	assert.Equal(t, 1, info.NumAckPending, "returning nil from the DeliverFunc must not ack")

	require.NoError(t, d.Ack())
	assert.True(t, d.Settled())
	require.ErrorIs(t, d.Ack(), ErrAlreadySettled)
	require.ErrorIs(t, d.Nak(), ErrAlreadySettled)
	info = settledConsumer(t, js, "explicit", "app-explicit")
	assert.Equal(t, uint64(1), info.AckFloor.Stream)
	assert.Equal(t, uint64(1), info.Delivered.Consumer)
}

func TestSubscribeDeliveriesCancelHandsHeldOver(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackWait": "30s"})

	subCtx, cancel := context.WithCancel(t.Context())
	defer cancel()
	held := make(chan *Delivery, 10)
	done, err := ps.SubscribeDeliveries(subCtx, pubsub.SubscribeRequest{Topic: "held"}, func(d *Delivery) error {
		held <- d // kept, never settled
		return nil
	})
	require.NoError(t, err)
	for i := range 3 {
		publish(t, ps, "held", fmt.Sprintf("m%d", i), nil)
	}
	var first []*Delivery
	for range 3 {
		first = append(first, recv(t, held, waitFor))
	}

	cancelled := time.Now()
	cancel()
	closedWithin(t, done, waitShort, "closing the done channel after the context was cancelled")
	for _, d := range first {
		assert.True(t, d.Settled(), "held delivery was taken from the ended subscription")
		assert.ErrorIs(t, d.Ack(), ErrAlreadySettled, "a late ack through the old subscription must not settle what the next one holds")
	}

	again := make(chan *Delivery, 10)
	done2, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "held"}, func(d *Delivery) error {
		again <- d
		return d.Ack()
	})
	require.NoError(t, err)
	seen := map[string]bool{}
	for range 3 {
		d := recv(t, again, 10*time.Second)
		seen[string(d.Data)] = true
		assert.Equal(t, uint64(1), d.Deliveries, "handed over, not redelivered: JetStream counted no second delivery")
	}
	assert.Len(t, seen, 3)
	assert.Less(t, time.Since(cancelled), 10*time.Second, "messages came back by ack timeout, not by being handed over")
	settledConsumer(t, js, "held", "app-held")
	select {
	case <-done2:
		t.Fatal("the second subscription ended early")
	default:
	}
}

// A handler that gives up because its subscription ended (it returns its
// context's error) has not handled its message: behaviour.md says the
// message goes to the next subscription "like a message the app never saw,
// without using up a delivery". An app that ends and starts its
// subscription again a few times while that message is in its handler must
// still get it, also at maxDeliver 1, where a delivery used up loses it.
func TestCancelledHandlerUsesUpNoDeliveryAcrossRestarts(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deliverAll": "true"})
	publish(t, ps, "restarts", "m", nil)
	for i := 1; i <= 5; i++ {
		entered := make(chan string, 1)
		subCtx, cancel := context.WithCancel(t.Context())
		require.NoError(t, ps.Subscribe(subCtx, pubsub.SubscribeRequest{Topic: "restarts"}, func(ctx context.Context, m *pubsub.NewMessage) error {
			entered <- string(m.Data)
			<-ctx.Done()
			return ctx.Err()
		}))
		select {
		case <-entered:
		case <-time.After(waitFor):
			cancel()
			info, err := consumerInfo(js, "restarts", "app-restarts")
			require.NoError(t, err)
			t.Fatalf("subscription %d never got the message that the %d before it gave up on unhandled (context canceled); the durable has %d pending, %d ack pending, %d redelivered, ack floor %d: the message was given back as a failed delivery on its last allowed delivery",
				i, i-1, info.NumPending, info.NumAckPending, info.NumRedelivered, info.AckFloor.Stream)
		}
		cancel()
		require.Eventually(t, func() bool {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			return len(ps.subs) == 0
		}, waitFor, tick, "subscription %d did not end", i)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "pausable", nil, h)
	publish(t, ps, "pausable", "m1", nil)
	assert.Equal(t, "m1", string(recv(t, got, waitFor).Data))

	require.NoError(t, ps.Pause(ctx(t)))
	require.NoError(t, ps.Pause(ctx(t)), "Pause is idempotent")
	publish(t, ps, "pausable", "m2", nil)
	nothing(t, got, time.Second)
	info, err := consumerInfo(js, "pausable", "app-pausable")
	require.NoError(t, err)
	require.NotNil(t, info, "the consumer must survive a pause")
	assert.Equal(t, uint64(1), info.NumPending, "m2 waits in the stream")

	require.NoError(t, ps.Resume(ctx(t)))
	require.NoError(t, ps.Resume(ctx(t)), "Resume is idempotent")
	m := recv(t, got, waitFor)
	assert.Equal(t, "m2", string(m.Data))
	settledConsumer(t, js, "pausable", "app-pausable")
}

func TestConsumerDeletedByAdminIsRecreated(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "admin", nil, h)
	publish(t, ps, "admin", "m1", nil)
	assert.Equal(t, "m1", string(recv(t, got, waitFor).Data))

	require.NoError(t, js.DeleteConsumer(ctx(t), "admin", "app-admin"))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "admin", "app-admin")
		return err == nil && info != nil
	}, waitFor, tick, "the consumer was not re-created")

	publish(t, ps, "admin", "m2", nil)
	// The re-created consumer may hand m1 out again; m2 must arrive.
	deadline := time.After(waitFor)
	for {
		select {
		case m := <-got:
			if string(m.Data) == "m2" {
				return
			}
		case <-deadline:
			t.Fatal("delivery did not continue after the consumer was deleted")
		}
	}
}

func TestBulkSubscribe(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverPolicy": "all"})
	const n = 12
	for i := range n {
		publish(t, ps, "bulksub", fmt.Sprintf("m%d", i), nil)
	}

	var mu sync.Mutex
	var sizes []int
	counts := map[string]int{}
	acked := map[string]bool{}
	redelivered := map[string]string{}
	err := ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic:               "bulksub",
		BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 5, MaxAwaitDurationMs: 200},
	}, func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, "bulksub", msg.Topic)
		sizes = append(sizes, len(msg.Entries))
		var failed error
		statuses := make([]pubsub.BulkSubscribeResponseEntry, 0, len(msg.Entries))
		for _, e := range msg.Entries {
			data := string(e.Event)
			counts[data]++
			var st error
			if (data == "m3" || data == "m7") && counts[data] == 1 {
				st = errors.New("entry failed")
				failed = st
			} else {
				acked[data] = true
				if counts[data] > 1 {
					redelivered[data] = e.Metadata[MetadataDeliveries]
				}
			}
			statuses = append(statuses, pubsub.BulkSubscribeResponseEntry{EntryId: e.EntryId, Error: st})
		}
		return statuses, failed
	})
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == n
	}, waitFor, tick)
	info := settledConsumer(t, js, "bulksub", "app-bulksub")
	assert.Equal(t, uint64(n+2), info.Delivered.Consumer, "only the two failed entries are delivered again")

	mu.Lock()
	defer mu.Unlock()
	for _, s := range sizes {
		assert.LessOrEqual(t, s, 5)
	}
	assert.Contains(t, sizes, 5, "messages are batched: %v", sizes)
	for i := range n {
		data := fmt.Sprintf("m%d", i)
		want := 1
		if data == "m3" || data == "m7" {
			want = 2
		}
		assert.Equal(t, want, counts[data], data)
	}
	assert.Equal(t, map[string]string{"m3": "2", "m7": "2"}, redelivered)
}

// A bulk subscription that ends while its handler runs: the component
// cancels the handler's context, and the handler gives up on the batch, as
// daprd's does (its bulk handler answers every entry with context.Canceled).
// The app never handled those messages, so they must reach the next
// subscription of the durable, as held messages do, also at maxDeliver 1.
func TestBulkSubscribeEndWhileHandlerRuns(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1"})
	cfg := pubsub.BulkSubscribeConfig{MaxMessagesCount: 3, MaxAwaitDurationMs: 100}
	entered := make(chan struct{}, 10)
	subCtx, cancel := context.WithCancel(t.Context())
	require.NoError(t, ps.BulkSubscribe(subCtx, pubsub.SubscribeRequest{Topic: "bulkend", BulkSubscribeConfig: cfg},
		func(ctx context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
			entered <- struct{}{}
			<-ctx.Done()
			out := make([]pubsub.BulkSubscribeResponseEntry, len(msg.Entries))
			for i, e := range msg.Entries {
				out[i] = pubsub.BulkSubscribeResponseEntry{EntryId: e.EntryId, Error: ctx.Err()}
			}
			return out, ctx.Err()
		}))
	require.Eventually(t, func() bool { i, _ := consumerInfo(js, "bulkend", "app-bulkend"); return i != nil }, waitFor, tick)
	for i := range 3 {
		publish(t, ps, "bulkend", fmt.Sprintf("e%d", i), nil)
	}
	recv(t, entered, waitFor)
	cancel()

	var mu sync.Mutex
	got := map[string]bool{}
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{Topic: "bulkend", BulkSubscribeConfig: cfg},
		func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range msg.Entries {
				got[string(e.Event)] = true
			}
			return nil, nil
		}))
	if !assert.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 3
	}, waitFor, tick) {
		info, err := consumerInfo(js, "bulkend", "app-bulkend")
		require.NoError(t, err)
		t.Fatalf("the messages the ended subscription's handler gave up on (context canceled) never reached the next subscription; the durable has %d pending, %d ack pending, ack floor %d: the interrupted delivery was counted as a failure and was the last one",
			info.NumPending, info.NumAckPending, info.AckFloor.Stream)
	}
}

// A bulk subscription that ends while a message waits in a batch that is
// not full and not yet due: the app never saw that message, so it goes to
// the next subscription of the durable without using up a delivery. An app
// that ends and starts its bulk subscription a few times before the batch
// is due must still get the message, also at maxDeliver 1.
func TestBulkSubscribeUnsentBatchUsesUpNoDeliveryAcrossRestarts(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deliverAll": "true"})
	publish(t, ps, "bulkrestarts", "m", nil)
	never := func(context.Context, *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		t.Error("the handler got a batch before it was due")
		return nil, nil
	}
	for i := 1; i <= 4; i++ {
		subCtx, cancel := context.WithCancel(t.Context())
		require.NoError(t, ps.BulkSubscribe(subCtx, pubsub.SubscribeRequest{
			Topic: "bulkrestarts", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 10, MaxAwaitDurationMs: 60000},
		}, never))
		// The message is in the batch, which waits for more or for 60s.
		require.Eventually(t, func() bool {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			for s := range ps.subs {
				s.mu.Lock()
				n := s.handedOn
				s.mu.Unlock()
				return n == 1
			}
			return false
		}, waitFor, tick, "subscription %d never put the message in a batch", i)
		cancel()
		require.Eventually(t, func() bool {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			return len(ps.subs) == 0
		}, waitFor, tick, "subscription %d did not end", i)
	}

	got := make(chan string, 10)
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkrestarts", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 10, MaxAwaitDurationMs: 100},
	}, func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		for _, e := range msg.Entries {
			got <- string(e.Event)
		}
		return nil, nil
	}))
	select {
	case m := <-got:
		assert.Equal(t, "m", m)
	case <-time.After(waitFor):
		info, err := consumerInfo(js, "bulkrestarts", "app-bulkrestarts")
		require.NoError(t, err)
		t.Fatalf("the message never reached the app: 4 bulk subscriptions ended while it waited, unseen, in a batch not yet due, and the durable has %d pending, %d ack pending, ack floor %d: it was given back as a failed delivery on its last allowed delivery",
			info.NumPending, info.NumAckPending, info.AckFloor.Stream)
	}
}

// Close while a bulk handler runs: the handler finishes within the grace
// that Close gives it, and fails an entry at its last delivery. With
// deadLetterSubject set, that entry must reach the dead-letter subject, as
// it would a moment earlier; JetStream will not deliver it again.
func TestBulkSubscribeLastFailureDuringCloseIsDeadLettered(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	observer, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "dlq", "deliverAll": "true"})
	dead, deadCh := collect()
	subscribe(t, observer, "dead.bulkclose", nil, dead)

	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"})
	entered := make(chan int, 10)
	release := make(chan struct{})
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkclose", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 2, MaxAwaitDurationMs: 2000},
	}, func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		entered <- len(msg.Entries)
		<-release
		out := make([]pubsub.BulkSubscribeResponseEntry, len(msg.Entries))
		var failed error
		for i, e := range msg.Entries {
			out[i].EntryId = e.EntryId
			if string(e.Event) == "bad" {
				out[i].Error = errors.New("the app failed it")
				failed = out[i].Error
			}
		}
		return out, failed
	}))
	require.Eventually(t, func() bool { i, _ := consumerInfo(js, "bulkclose", "app-bulkclose"); return i != nil }, waitFor, tick)
	publish(t, ps, "bulkclose", "good", nil)
	publish(t, ps, "bulkclose", "bad", nil)
	require.Equal(t, 2, recv(t, entered, waitFor), "both messages in one batch")

	closed := make(chan error, 1)
	go func() { closed <- ps.Close() }()
	closedWithin(t, ps.Closing(), waitShort, "Close starting")
	close(release)
	require.NoError(t, recv(t, closed, waitFor))

	m := recv(t, deadCh, waitFor)
	assert.Equal(t, "bad", string(m.Data))
}

// A bulk subscription asks for batches larger than maxInFlight. A batch
// that holds the whole in-flight window cannot grow: nothing more is pulled
// until it is settled. It must go to the handler then, not wait out
// maxAwaitDurationMs with the window full.
func TestBulkSubscribeFullWindowIsNotHeldBack(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "maxInFlight": "10"})
	const n = 50
	for i := range n {
		publish(t, ps, "bulkwindow", fmt.Sprintf("w%d", i), nil)
	}
	var mu sync.Mutex
	var sizes []int
	handled := 0
	start := time.Now()
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkwindow", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 100, MaxAwaitDurationMs: 3000},
	}, func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(msg.Entries))
		handled += len(msg.Entries)
		return nil, nil
	}))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled >= n
	}, 30*time.Second, tick)
	took := time.Since(start)
	settledConsumer(t, js, "bulkwindow", "app-bulkwindow")
	mu.Lock()
	defer mu.Unlock()
	assert.Less(t, took, 5*time.Second, "%d messages of a backlog took %s in batches %v: each batch of a full maxInFlight window waited out maxAwaitDurationMs (3s)", n, took.Round(100*time.Millisecond), sizes)
}

// Pause while a bulk batch is still filling: the app has not seen its
// messages, so they stay held for Resume, as unseen messages do; the
// handler is not called while paused.
func TestBulkSubscribePartialBatchWaitsForResume(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "10"})
	batches := make(chan []string, 10)
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkpartial", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 10, MaxAwaitDurationMs: 2000},
	}, func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		var data []string
		for _, e := range msg.Entries {
			data = append(data, string(e.Event))
		}
		batches <- data
		return nil, nil
	}))
	require.Eventually(t, func() bool { i, _ := consumerInfo(js, "bulkpartial", "app-bulkpartial"); return i != nil }, waitFor, tick)
	publish(t, ps, "bulkpartial", "p0", nil)
	publish(t, ps, "bulkpartial", "p1", nil)
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "bulkpartial", "app-bulkpartial")
		return err == nil && i != nil && i.NumAckPending == 2
	}, waitFor, tick)
	require.NoError(t, ps.Pause(ctx(t)))
	paused := time.Now()
	select {
	case b := <-batches:
		t.Fatalf("the handler got %v %s after Pause returned, while paused", b, time.Since(paused).Round(100*time.Millisecond))
	case <-time.After(4 * time.Second): // longer than maxAwaitDurationMs: a window for a delivery while paused to show
	}
	require.NoError(t, ps.Resume(ctx(t)))
	assert.ElementsMatch(t, []string{"p0", "p1"}, recv(t, batches, waitFor))
}

// bulkRecorder counts what a bulk handler gets; fail decides an entry's
// error from its data and how often it was seen (counting this time).
type bulkRecorder struct {
	mu     sync.Mutex
	counts map[string]int
	ok     map[string]bool
	sizes  []int
}

func newBulkRecorder() *bulkRecorder {
	return &bulkRecorder{counts: map[string]int{}, ok: map[string]bool{}}
}

func (r *bulkRecorder) handler(fail func(data string, seen int) error, before func()) pubsub.BulkHandler {
	return func(_ context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		if before != nil {
			before()
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.sizes = append(r.sizes, len(msg.Entries))
		out := make([]pubsub.BulkSubscribeResponseEntry, len(msg.Entries))
		var failed error
		for i, e := range msg.Entries {
			data := string(e.Event)
			r.counts[data]++
			out[i].EntryId = e.EntryId
			if fail != nil {
				out[i].Error = fail(data, r.counts[data])
			}
			if out[i].Error != nil {
				failed = out[i].Error
			} else {
				r.ok[data] = true
			}
		}
		return out, failed
	}
}

func (r *bulkRecorder) okCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ok)
}

// Pause while a batch of maxMessagesCount 1 is in the handler, with more
// messages already received: once the handler returns, it gets nothing
// more until Resume, as with larger batches (a due batch waits for Resume)
// and with Subscribe.
func TestBulkSubscribeSingleEntryBatchesWaitForResume(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
	var pausing, pauseReturned atomic.Bool
	whilePaused := make(chan string, 100)
	entered := make(chan struct{}, 100)
	release := make(chan struct{})
	var once sync.Once
	r := newBulkRecorder()
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkone", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 1, MaxAwaitDurationMs: 100},
	}, func(c context.Context, msg *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		entered <- struct{}{}
		first := false
		once.Do(func() { first = true; <-release })
		if !first && pausing.Load() {
			whilePaused <- fmt.Sprintf("%s (Pause returned: %v)", msg.Entries[0].Event, pauseReturned.Load())
		}
		return r.handler(nil, nil)(c, msg)
	}))
	require.Eventually(t, func() bool { i, _ := consumerInfo(js, "bulkone", "app-bulkone"); return i != nil }, waitFor, tick)
	for i := range 4 {
		publish(t, ps, "bulkone", fmt.Sprintf("o%d", i), nil)
	}
	recv(t, entered, waitFor)
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "bulkone", "app-bulkone")
		return err == nil && i.NumAckPending == 4
	}, waitFor, tick)
	pausing.Store(true)
	paused := make(chan error, 1)
	go func() { err := ps.Pause(ctx(t)); pauseReturned.Store(true); paused <- err }()
	require.NoError(t, recv(t, paused, waitFor))
	close(release) // the app finishes the batch it had before Pause
	select {
	case m := <-whilePaused:
		t.Fatalf("the handler got %s while paused: a batch of maxMessagesCount 1 is handed on as soon as it is full, without the pause check a due batch gets", m)
	case <-time.After(2 * time.Second): // a window for a delivery while paused to show
	}
	pausing.Store(false)
	require.NoError(t, ps.Resume(ctx(t)))
	require.Eventually(t, func() bool { return r.okCount() == 4 }, waitFor, tick)
}

// An operator lowers the durable's maxAckPending below maxInFlight while a
// bulk subscription runs (nats consumer edit --max-pending 5); the
// subscription follows the consumer. JetStream hands out no more than 5
// messages at a time, so a batch of 5 is as full as it gets: it must go to
// the handler then, not wait out maxAwaitDurationMs each time.
func TestBulkSubscribeLoweredMaxAckPendingIsNotHeldBack(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
	r := newBulkRecorder()
	require.NoError(t, ps.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkmaxack", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 100, MaxAwaitDurationMs: 3000},
	}, r.handler(nil, nil)))
	var info *natsjs.ConsumerInfo
	require.Eventually(t, func() bool { info, _ = consumerInfo(js, "bulkmaxack", "app-bulkmaxack"); return info != nil }, waitFor, tick)
	cfg := info.Config
	cfg.MaxAckPending = 5
	_, err := js.UpdateConsumer(ctx(t), "bulkmaxack", cfg)
	require.NoError(t, err)
	const n = 30
	start := time.Now()
	for i := range n {
		publish(t, ps, "bulkmaxack", fmt.Sprintf("k%d", i), nil)
	}
	require.Eventually(t, func() bool { return r.okCount() == n }, 60*time.Second, tick)
	took := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Less(t, took, 6*time.Second, "%d messages took %s in batches %v: with the durable's maxAckPending at 5, each batch waited out maxAwaitDurationMs (3s) for entries JetStream would not hand out", n, took.Round(100*time.Millisecond), r.sizes)
}

// Pause while messages wait in a bulk batch not yet due: the app has not
// seen them, so after 30 s of pause they go back to JetStream, as unseen
// messages do, and another replica of the app gets them.
func TestBulkSubscribePausedBatchGoesBackAfterHandoverTimeout(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	a, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
	require.NoError(t, a.BulkSubscribe(t.Context(), pubsub.SubscribeRequest{
		Topic: "bulkpausedback", BulkSubscribeConfig: pubsub.BulkSubscribeConfig{MaxMessagesCount: 10, MaxAwaitDurationMs: 60000},
	}, func(context.Context, *pubsub.BulkMessage) ([]pubsub.BulkSubscribeResponseEntry, error) {
		t.Error("the paused replica's handler got a batch")
		return nil, nil
	}))
	require.Eventually(t, func() bool { i, _ := consumerInfo(js, "bulkpausedback", "app-bulkpausedback"); return i != nil }, waitFor, tick)
	publish(t, a, "bulkpausedback", "b0", nil)
	publish(t, a, "bulkpausedback", "b1", nil)
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "bulkpausedback", "app-bulkpausedback")
		return err == nil && i.NumAckPending == 2
	}, waitFor, tick)
	require.NoError(t, a.Pause(ctx(t)))

	b, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
	h, got := collect()
	subscribe(t, b, "bulkpausedback", nil, h)
	deadline := time.After(handoverTimeout + waitFor)
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case m := <-got:
			seen[string(m.Data)] = true
		case <-deadline:
			i, _ := consumerInfo(js, "bulkpausedback", "app-bulkpausedback")
			t.Fatalf("the messages waiting, unseen, in the paused replica's bulk batch never went back to JetStream after %s of pause (another replica got %v; the durable has %d ack pending)", handoverTimeout, seen, i.NumAckPending)
		}
	}
}
