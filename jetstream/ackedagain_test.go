package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The acks of messages the app handled are lost on the way (the network
// broke before the client noticed), and JetStream delivers the messages
// again after ackWait: the component acknowledges them again, and the app
// does not get them twice.
func TestRedeliveryOfAnAckedMessageIsAckedAgain(t *testing.T) {
	t.Parallel()
	const n = 5
	ns, js := startNATS(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"consumerID": "app", "ackWait": "2s", "reconnectWait": "100ms"})
	h, got := collect()
	subscribe(t, ps, "lostacks", nil, h)
	publish(t, ps, "lostacks", "first", nil)
	assert.Equal(t, "first", string(recv(t, got, waitFor).Data))
	settledConsumer(t, js, "lostacks", "app-lostacks")

	lost := px.dropFrom("+ACK")
	for i := range n {
		_, err := js.Publish(ctx(t), "lostacks", []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	for i := range n {
		assert.Equal(t, fmt.Sprint(i), string(recv(t, got, waitFor).Data))
	}
	closedWithin(t, lost, waitFor, "no ack left the component")
	px.cut()
	px.restore()

	info := settledConsumer(t, js, "lostacks", "app-lostacks")
	assert.Equal(t, uint64(n+1), info.AckFloor.Stream)
	assert.Greater(t, info.Delivered.Consumer, uint64(n+1), "JetStream did not deliver again")
	nothing(t, got, time.Second)
	st := subscriptionStats(t, ps, "lostacks")
	assert.Equal(t, uint64(n), st.AckedAgain, "redeliveries acknowledged again")
	assert.Equal(t, uint64(n+1), st.Acks, "acks of the app's")
}

func subscriptionStats(t *testing.T, ps *PubSub, topic string) SubscriptionStats {
	t.Helper()
	for _, s := range ps.Stats().Subscriptions {
		if s.Topic == topic {
			return s
		}
	}
	t.Fatalf("no subscription stats for topic %q", topic)
	return SubscriptionStats{}
}

// An operator resets the durable to replay what the app handled (nats
// consumer edit with a reset, or the consumer made again): the replay is
// for the app, and so is the redelivery of a replayed message the app
// fails, although this subscription acknowledged it before.
func TestReplayedMessageTheAppFailsIsDeliveredAgain(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	var mu sync.Mutex
	handled := 0
	got := make(chan delivered, 10)
	subscribe(t, ps, "replay", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		got <- delivered{data: string(m.Data), deliveries: m.Metadata[MetadataDeliveries]}
		mu.Lock()
		defer mu.Unlock()
		if handled++; handled == 2 {
			return errors.New("the first replay fails")
		}
		return nil
	})
	publish(t, ps, "replay", "a", nil)
	assert.Equal(t, delivered{data: "a", deliveries: "1"}, recv(t, got, waitFor))
	settledConsumer(t, js, "replay", "app-replay")

	_, err := mustStream(t, js, "replay").ResetConsumerToSequence(ctx(t), "app-replay", 1)
	require.NoError(t, err)
	assert.Equal(t, delivered{data: "a", deliveries: "1"}, recv(t, got, waitFor), "the replay")
	assert.Equal(t, delivered{data: "a", deliveries: "2"}, recv(t, got, waitFor), "the replay the app failed, delivered again")
	settledConsumer(t, js, "replay", "app-replay")
	assert.Zero(t, subscriptionStats(t, ps, "replay").AckedAgain)
}

// What a subscription remembers of its acks is bounded, and tells a
// message apart from another at the same sequence of a stream made again
// under the same name.
func TestAckedHereIsBoundedAndKnowsTheMessage(t *testing.T) {
	t.Parallel()
	at := func(seq uint64, stored int64) *Delivery {
		return &Delivery{stream: streamKey{conn: "c", stream: "S"}, Sequence: seq, stored: stored}
	}
	var a ackedHere
	// Out of order, as parallel handlers ack, and more than it keeps:
	// the lowest sequences go.
	for base := uint64(1); base <= 3*ackedRemembered; base += 3 {
		for _, seq := range []uint64{base + 2, base, base + 1} {
			a.add(at(seq, int64(seq)))
		}
	}
	top := uint64(3 * ackedRemembered)
	assert.Len(t, a.live(), ackedRemembered)
	assert.LessOrEqual(t, cap(a.entries), ackedSpace)
	assert.False(t, a.has(at(top-ackedRemembered, int64(top-ackedRemembered))), "the lowest are forgotten")
	for _, seq := range []uint64{top - ackedRemembered + 1, top - 1, top} {
		assert.True(t, a.has(at(seq, int64(seq))), "sequence %d", seq)
	}
	for i := 1; i < len(a.live()); i++ {
		require.Less(t, a.live()[i-1].seq, a.live()[i].seq, "not in sequence order at %d", i)
	}
	a.add(at(1, 1))
	assert.False(t, a.has(at(1, 1)), "an ack below everything remembered is not kept")
	assert.False(t, a.has(at(top, 99)), "another message at the same sequence")
	assert.False(t, a.has(at(top, 0)), "a message whose stored time is unknown")
	assert.False(t, a.has(&Delivery{stream: streamKey{conn: "c", stream: "T"}, Sequence: top, stored: int64(top)}), "another stream")
	a.forget(at(top, int64(top)))
	assert.False(t, a.has(at(top, int64(top))))
	a.add(at(top, int64(top)))
	assert.True(t, a.has(at(top, int64(top))), "acknowledged again after it was forgotten")

	// Acks of another stream (the topic moved) start over.
	a.add(&Delivery{stream: streamKey{conn: "c", stream: "T"}, Sequence: 1, stored: 1})
	assert.False(t, a.has(at(top, int64(top))))
	assert.Len(t, a.live(), 1)
}
