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
	for seq := uint64(1); seq <= ackedRemembered+10; seq++ {
		a.add(at(seq, int64(seq)))
	}
	assert.False(t, a.has(at(10, 10)), "the oldest acks are forgotten")
	assert.True(t, a.has(at(11, 11)))
	assert.True(t, a.has(at(ackedRemembered+10, ackedRemembered+10)))
	assert.Len(t, a.stored, ackedRemembered)
	assert.False(t, a.has(at(11, 99)), "another message at the same sequence")
	assert.False(t, a.has(at(11, 0)), "a message whose stored time is unknown")
	assert.False(t, a.has(&Delivery{stream: streamKey{conn: "c", stream: "T"}, Sequence: 11, stored: 11}), "another stream")
	a.forget(at(11, 11))
	assert.False(t, a.has(at(11, 11)))

	// Acks of another stream (the topic moved) start over.
	a.add(&Delivery{stream: streamKey{conn: "c", stream: "T"}, Sequence: 1, stored: 1})
	assert.False(t, a.has(at(12, 12)))
	assert.Len(t, a.stored, 1)
}
