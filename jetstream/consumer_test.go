package jetstream

import (
	"time"

	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

func TestDurableNameServesTwoTopics(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.>", "durableName": "svc"})
	hc, created := collect()
	hp, paid := collect()
	subscribe(t, ps, "orders.created", nil, hc)
	subscribe(t, ps, "orders.paid", nil, hp)

	publish(t, ps, "orders.created", "c1", nil)
	publish(t, ps, "orders.paid", "p1", nil)
	m := recv(t, created, waitFor)
	assert.Equal(t, "c1", string(m.Data))
	assert.Equal(t, "orders.created", m.Topic)
	m = recv(t, paid, waitFor)
	assert.Equal(t, "p1", string(m.Data))
	assert.Equal(t, "orders.paid", m.Topic)

	infos := consumerInfos(t, js, "ORDERS")
	require.Len(t, infos, 2)
	filters := map[string]string{}
	for _, ci := range infos {
		assert.Equal(t, ci.Name, ci.Config.Durable, "consumer %q is durable", ci.Name)
		assert.True(t, strings.HasPrefix(ci.Name, "svc-"), ci.Name)
		assert.NotContains(t, ci.Name, ".", "consumer names are sanitised")
		assert.True(t, metadata.ValidName(ci.Name), ci.Name)
		filters[ci.Config.FilterSubject] = ci.Name
	}
	require.Contains(t, filters, "orders.created")
	require.Contains(t, filters, "orders.paid")
	assert.NotEqual(t, filters["orders.created"], filters["orders.paid"])
}

// received gathers the messages of several handlers.
type received struct {
	mu     sync.Mutex
	counts map[string]int
	total  int
	by     map[string]int // per handler name
}

func newReceived() *received { return &received{counts: map[string]int{}, by: map[string]int{}} }

func (r *received) handler(name string) pubsub.Handler {
	return func(_ context.Context, m *pubsub.NewMessage) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.counts[string(m.Data)]++
		r.by[name]++
		r.total++
		return nil
	}
}

func (r *received) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.counts)
}

func TestSameConsumerIDCompetes(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	props := map[string]string{"consumerID": "workers"}
	ps1, _ := open(t, ns.ClientURL(), props)
	ps2, _ := open(t, ns.ClientURL(), props)
	r := newReceived()
	subscribe(t, ps1, "jobs", nil, r.handler("one"))
	subscribe(t, ps2, "jobs", nil, r.handler("two"))

	const n = 20
	for i := range n {
		publish(t, ps1, "jobs", fmt.Sprintf("job-%d", i), nil)
	}
	require.Eventually(t, func() bool { return r.distinct() == n }, waitFor, tick)
	info := settledConsumer(t, js, "jobs", "workers-jobs")
	assert.Equal(t, uint64(n), info.Delivered.Consumer, "every message delivered once to the shared consumer")

	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Equal(t, n, r.total, "each message is handled exactly once across both instances: %v", r.by)
	for k, c := range r.counts {
		assert.Equal(t, 1, c, k)
	}
	assert.Len(t, consumerInfos(t, js, "jobs"), 1)
}

// With ackPolicy all, acknowledging a message acknowledges every earlier one
// of the durable too. Replicas of an app share the durable, each with its one
// message in flight: when one replica fails the earlier message and another
// handles a later one, the failed message must still come again.
func TestAckAllFailureOnOneReplicaIsRedelivered(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	props := map[string]string{"consumerID": "workers", "ackPolicy": "all", "deliverAll": "true"}
	ps1, _ := open(t, ns.ClientURL(), props)
	ps2, _ := open(t, ns.ClientURL(), props)
	publish(t, ps1, "acks", "first", nil)
	publish(t, ps1, "acks", "second", nil)

	got := make(chan *Delivery, 10)
	keep := func(d *Delivery) error { got <- d; return nil }
	_, err := ps1.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "acks"}, keep)
	require.NoError(t, err)
	first := recv(t, got, waitFor)
	require.Equal(t, "first", string(first.Data))
	_, err = ps2.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "acks"}, keep)
	require.NoError(t, err)
	// The second replica asks for messages, and gets the later one at once,
	// unless JetStream holds it back while the first one is unanswered.
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "acks", "workers-acks")
		return len(got) > 0 || (err == nil && i != nil && i.NumWaiting > 0)
	}, waitFor, tick, "the second replica neither got the later message nor asked for it")
	var handled []string
	select {
	case d := <-got:
		require.NoError(t, d.Ack())
		handled = append(handled, string(d.Data))
	case <-time.After(3 * time.Second): // a window for the later message to show, not a wait
	}
	require.NoError(t, first.Nak())

	deadline := time.After(waitFor)
	for !slices.Contains(handled, "first") || !slices.Contains(handled, "second") {
		select {
		case d := <-got:
			require.NoError(t, d.Ack())
			handled = append(handled, string(d.Data))
		case <-deadline:
			i, err := consumerInfo(js, "acks", "workers-acks")
			require.NoError(t, err)
			t.Fatalf("the message one replica failed never came again after another replica acknowledged %v: the durable has ack floor %d, %d pending, %d ack pending; JetStream took the later ack (ackPolicy all) for the failed message too",
				handled, i.AckFloor.Stream, i.NumPending, i.NumAckPending)
		}
	}
	assert.ElementsMatch(t, []string{"first", "second"}, handled)
	settledConsumer(t, js, "acks", "workers-acks")
}

func TestDifferentConsumerIDsEachReceiveAll(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	psA, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "a"})
	psB, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "b"})
	ra, rb := newReceived(), newReceived()
	subscribe(t, psA, "news", nil, ra.handler("a"))
	subscribe(t, psB, "news", nil, rb.handler("b"))

	const n = 5
	for i := range n {
		publish(t, psA, "news", fmt.Sprintf("n%d", i), nil)
	}
	require.Eventually(t, func() bool { return ra.distinct() == n && rb.distinct() == n }, waitFor, tick)
	settledConsumer(t, js, "news", "a-news")
	settledConsumer(t, js, "news", "b-news")
	assert.Len(t, consumerInfos(t, js, "news"), 2)
}

func TestNoNameMeansEphemeralConsumer(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	h, got := collect()
	subscribe(t, ps, "eph", nil, h)
	publish(t, ps, "eph", "x", nil)
	m := recv(t, got, waitFor)
	assert.Equal(t, "x", string(m.Data))

	infos := consumerInfos(t, js, "eph")
	require.Len(t, infos, 1)
	assert.Empty(t, infos[0].Config.Durable, "no durableName, queueGroupName or consumerID: ephemeral")
	assert.Positive(t, infos[0].Config.InactiveThreshold)
	assert.Equal(t, infos[0].Name, m.Metadata[MetadataConsumer])
}

func TestDeliverPolicies(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	for i := 1; i <= 3; i++ {
		publish(t, ps, "hist", fmt.Sprintf("m%d", i), nil)
	}

	cases := []struct {
		name  string
		md    map[string]string
		first string
		n     int
	}{
		{"deliverPolicy all", map[string]string{"deliverPolicy": "all"}, "m1", 3},
		{"deliverAll", map[string]string{"deliverAll": "true"}, "m1", 3},
		{"startSequence 2", map[string]string{"startSequence": "2"}, "m2", 2},
		{"startSequence 1 with deliverPolicy all", map[string]string{"startSequence": "1", "deliverPolicy": "all"}, "m1", 3},
		{"deliverPolicy last", map[string]string{"deliverPolicy": "last"}, "m3", 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			md := map[string]string{"consumerID": fmt.Sprintf("c%d", i)}
			for k, v := range c.md {
				md[k] = v
			}
			h, got := collect()
			subscribe(t, ps, "hist", md, h)
			for j := range c.n {
				m := recv(t, got, waitFor)
				if j == 0 {
					assert.Equal(t, c.first, string(m.Data))
				}
				assert.Equal(t, fmt.Sprintf("m%d", 4-c.n+j), string(m.Data))
			}
			info := settledConsumer(t, js, "hist", md["consumerID"]+"-hist")
			assert.Equal(t, uint64(c.n), info.Delivered.Consumer)
		})
	}
}

func TestQueueGroupNameIsDurableBase(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	h, got := collect()
	subscribe(t, ps, "qtopic", map[string]string{"queueGroupName": "qg"}, h)
	publish(t, ps, "qtopic", "x", nil)
	m := recv(t, got, waitFor)
	assert.Equal(t, "qg-qtopic", m.Metadata[MetadataConsumer])
	infos := consumerInfos(t, js, "qtopic")
	require.Len(t, infos, 1)
	assert.Equal(t, "qg-qtopic", infos[0].Config.Durable)
}

func TestDefaultStartsAtSubscribe(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	publish(t, ps, "fresh", "before", nil)
	// Past the allowance for clock skew between the component and NATS.
	time.Sleep(startSkew + 500*time.Millisecond)

	h, got := collect()
	subscribe(t, ps, "fresh", nil, h)
	publish(t, ps, "fresh", "after", nil)

	m := recv(t, got, waitFor)
	assert.Equal(t, "after", string(m.Data), "a message published before Subscribe must not be delivered")
	assert.Equal(t, "2", m.Metadata[MetadataSequence])
	info := settledConsumer(t, js, "fresh", "app-fresh")
	assert.Equal(t, uint64(1), info.Delivered.Consumer)
}

// A durable made again to start at a sequence, which nats-server gave the
// state of the deleted one instead (its late state file), is told apart
// from one that started where it was asked to, or that another replica
// already uses.
func TestRestoredStaleConsumer(t *testing.T) {
	want := natsjs.ConsumerConfig{Durable: "app", DeliverPolicy: natsjs.DeliverByStartSequencePolicy, OptStartSeq: 6}
	info := func(ackFloor, delivered uint64, ackPending int) *natsjs.ConsumerInfo {
		return &natsjs.ConsumerInfo{Config: want, AckFloor: natsjs.SequenceInfo{Stream: ackFloor},
			Delivered: natsjs.SequenceInfo{Consumer: delivered}, NumAckPending: ackPending}
	}
	assert.True(t, restoredStale(info(0, 3, 3), want), "the deleted one's state, before its acks")
	assert.True(t, restoredStale(info(2, 4, 2), want), "the deleted one's state, part acked")
	assert.False(t, restoredStale(info(5, 0, 0), want), "a new consumer at sequence 6")
	assert.False(t, restoredStale(info(5, 2, 2), want), "in use by another replica since")
	assert.False(t, restoredStale(info(9, 4, 0), want), "acked past its start by another replica")
	all := want
	all.DeliverPolicy, all.OptStartSeq = natsjs.DeliverAllPolicy, 0
	assert.False(t, restoredStale(&natsjs.ConsumerInfo{Config: all, Delivered: natsjs.SequenceInfo{Consumer: 3}, NumAckPending: 3}, all), "no start sequence asked")
}
