package jetstream

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func publishRaw(t *testing.T, js natsjs.JetStream, subject, prefix string, n int) {
	t.Helper()
	for i := range n {
		_, err := js.Publish(ctx(t), subject, []byte(fmt.Sprintf("%s%d", prefix, i)))
		require.NoError(t, err)
	}
}

// An operator replaces a stream (nats stream rm ORDERS, then nats stream add
// ORDERS with the same subjects) while the app still works on messages of the
// old one. An ack subject names only the stream and the consumer, so an ack
// of old sequence N would settle message N of the new stream on the durable
// made again there, before the app saw it. Settling a message of the replaced
// stream must leave the new stream's messages alone: a new message whose
// handler fails is delivered again.
func TestAckOfAReplacedStreamLeavesTheNewOneAlone(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	keepAccountStore(t, js)
	ordersStream(t, js)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "maxInFlight": "10"})
	gate := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]int{}
	subscribe(t, ps, "orders.a", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		k := string(m.Data)
		mu.Lock()
		seen[k]++
		n := seen[k]
		mu.Unlock()
		if k[0] == 'm' { // a message of the old stream: slow, then handled
			<-gate
			return nil
		}
		if n == 1 { // a message of the new stream: the first attempt fails
			return fmt.Errorf("first attempt at %s fails", k)
		}
		return nil
	})
	publishRaw(t, js, "orders.a", "m", 5) // sequences 1-5 of the old stream
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return seen["m0"] == 1 }, waitFor, tick)

	require.NoError(t, js.DeleteStream(ctx(t), "ORDERS"))
	ordersStream(t, js)
	require.Eventually(t, func() bool { i, err := consumerInfo(js, "ORDERS", ordersDurable); return err == nil && i != nil }, waitFor, tick, "no consumer on the new stream")
	publishRaw(t, js, "orders.a", "p", 5) // sequences 1-5 of the new stream
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && i != nil && i.NumAckPending == 5
	}, waitFor, tick, "the new messages are not delivered to the component")
	close(gate) // the app finishes the old messages: m0-m4 are acked

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range 5 {
			if seen[fmt.Sprintf("p%d", i)] < 2 {
				return false
			}
		}
		return true
	}, waitShort, tick, "a new message whose handler failed was not delivered again")
	require.Contains(t, log.String(), `stream \"ORDERS\" was deleted and made again while messages of the old one were held`)
}

// daprd restarts (a new subscription in the same component process) while an
// operator replaces the stream under the same name. The new subscription takes
// over what the old one held of the old stream (sequences 26-30), but those
// sequences say nothing of the new stream: a durable made again later (nats
// consumer rm) starts after the last message handled on the new stream, so
// that q0-q9, at sequences 6-15, all arrive.
func TestMessagesHandedOverFromAReplacedStreamKeepTheResumePoint(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	keepAccountStore(t, js)
	ordersStream(t, js)
	props := map[string]string{"autoProvision": "false", "consumerID": "app", "maxInFlight": "5", "deliverPolicy": "all"}
	first, _ := open(t, ns.ClientURL(), props)
	var mu sync.Mutex
	held := 0
	sctx, cancel := context.WithCancel(t.Context())
	done, err := first.SubscribeDeliveries(sctx, pubsub.SubscribeRequest{Topic: "orders.a"}, func(*Delivery) error {
		mu.Lock()
		held++
		mu.Unlock()
		return nil // the app never settles: it is restarted
	})
	require.NoError(t, err)
	publishRaw(t, js, "orders.b", "b", 25)
	publishRaw(t, js, "orders.a", "m", 20) // orders.a at sequences 26-45
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return held == 5 }, waitFor, tick)
	cancel() // daprd goes away; what it held waits for the next subscription
	closedWithin(t, done, waitFor, "the first subscription ended")

	require.NoError(t, js.DeleteStream(ctx(t), "ORDERS"))
	ordersStream(t, js)
	publishRaw(t, js, "orders.a", "p", 5) // sequences 1-5 of the new stream

	second, _ := open(t, ns.ClientURL(), props)
	h, got := collect()
	subscribe(t, second, "orders.a", nil, h)
	for range 10 { // p0-p4, and m0-m4 taken over from the old stream
		recv(t, got, waitFor)
	}
	settledConsumer(t, js, "ORDERS", ordersDurable)

	require.NoError(t, js.DeleteConsumer(ctx(t), "ORDERS", ordersDurable))
	require.Eventually(t, func() bool { i, err := consumerInfo(js, "ORDERS", ordersDurable); return err == nil && i != nil }, waitFor, tick, "the consumer was not made again")
	publishRaw(t, js, "orders.a", "q", 10) // sequences 6-15 of the new stream
	for i := range 10 {
		require.Equal(t, fmt.Sprintf("q%d", i), string(recv(t, got, waitShort).Data))
	}
}
