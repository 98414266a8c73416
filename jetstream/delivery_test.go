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
