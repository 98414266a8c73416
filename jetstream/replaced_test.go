package jetstream

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
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

// restartWiped stops ns, started with opts, and starts another nats-server
// in its place: the same address, another server name, and an empty store,
// as when the JetStream volume of a NATS pod was lost. The instances given
// are closed before the new server stops, while NATS is still up.
func restartWiped(t *testing.T, ns *server.Server, opts *server.Options, instances ...*PubSub) natsjs.JetStream {
	t.Helper()
	o := *opts
	o.Port = ns.Addr().(*net.TCPAddr).Port
	o.StoreDir = t.TempDir()
	o.ServerName = "replacement"
	natstest.Stop(ns)
	back := natstest.Run(t, &o)
	t.Cleanup(func() {
		for _, ps := range instances {
			_ = ps.Close()
		}
		natstest.Stop(back)
	})
	_, js := natstest.Client(t, back)
	return js
}

// publishWhenBack publishes data once the instance is connected again:
// a publish reported as failed was not stored.
func publishWhenBack(t *testing.T, ps *PubSub, topic, data string) {
	t.Helper()
	require.Eventually(t, func() bool {
		return ps.Publish(ctx(t), &pubsub.PublishRequest{PubsubName: "test", Topic: topic, Data: []byte(data)}) == nil
	}, waitFor, tick, "publish of %s after the restart", data)
}

// nats-server comes back with an empty store while a subscription with
// deliverPolicy new is cut off from it. A publisher (another pod) goes on,
// and auto-provisioning makes the stream again for it. The subscription
// then makes its durable again: what was published after the restart, and
// so after the subscription was made, is new to it and must arrive, as it
// does for a topic moved to another stream.
func TestDeliverNewAfterTheStoreWasWiped(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	_, js := natstest.Client(t, ns)
	px := newProxy(t, ns.Addr().String())
	sub, _ := open(t, px.url(), map[string]string{"consumerID": "app", "deliverPolicy": "new", "reconnectWait": "100ms"})
	pub, _ := open(t, ns.ClientURL(), map[string]string{"reconnectWait": "100ms"})
	h, got := collect()
	subscribe(t, sub, "wiped", nil, h)
	waitConsumer(t, js, "wiped", "app-wiped")
	publish(t, pub, "wiped", "before", nil)
	require.Equal(t, "before", string(recv(t, got, waitFor).Data))

	px.cut()
	restartWiped(t, ns, opts, sub, pub)
	publishWhenBack(t, pub, "wiped", "after")
	px.restore()
	require.Equal(t, "after", string(recv(t, got, waitFor).Data), "a message published after the restart never arrived")
}

// Two replicas share a durable. nats-server comes back with an empty store
// while replica A is cut off from it, its app still working on messages of
// the old stream. Replica B makes the stream and the durable again, and
// goes away. A then reconnects to a durable of the same name and gets new
// messages at the sequences of those it holds: they are other messages, and
// a new one whose handler fails must be delivered again, not taken for a
// copy of the old message A holds at its sequence.
func TestReplicaBackAfterAWipedRestartTellsTheNewStreamApart(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	px := newProxy(t, ns.Addr().String())
	props := map[string]string{"consumerID": "app", "reconnectWait": "100ms"}
	a, _ := open(t, px.url(), props)
	b, _ := open(t, otherPodURL(ns), props)
	var mu sync.Mutex
	held := 0
	seen := map[string]int{}
	_, err := a.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "wiped"}, func(d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		if d.Data[0] == 'm' { // the old stream's: the app is still at work on them
			held++
			return nil
		}
		seen[string(d.Data)]++
		if seen[string(d.Data)] == 1 {
			return d.Nak()
		}
		return d.Ack()
	})
	require.NoError(t, err)
	_, js := natstest.Client(t, ns)
	waitConsumer(t, js, "wiped", "app-wiped")
	publishRaw(t, js, "wiped", "m", 5) // sequences 1-5 of the old stream
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return held == 5 }, waitFor, tick)

	px.cut()
	js = restartWiped(t, ns, opts, a, b)
	bctx, leave := context.WithCancel(t.Context())
	left, err := b.SubscribeDeliveries(bctx, pubsub.SubscribeRequest{Topic: "wiped"}, func(d *Delivery) error { return d.Ack() })
	require.NoError(t, err)
	waitConsumer(t, js, "wiped", "app-wiped")
	leave()
	closedWithin(t, left, waitFor, "B's subscription ended")
	publishRaw(t, js, "wiped", "p", 5) // sequences 1-5 of the new stream
	px.restore()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range 5 {
			if seen[fmt.Sprintf("p%d", i)] < 2 {
				return false
			}
		}
		return true
	}, waitFor, tick, "a new message whose first delivery failed was not delivered again")
}

// As above, but replica B stays, and A's app finishes the old messages
// while A is still cut off: nats.go keeps the acks and sends them as soon as
// it reconnects, before A can see that the stream was made again. They must
// not settle B's new messages at the same sequences.
func TestAcksKeptThroughAWipedRestartLeaveTheNewStreamAlone(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	px := newProxy(t, ns.Addr().String())
	a, _ := open(t, px.url(), map[string]string{"consumerID": "app", "reconnectWait": "100ms"})
	b, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app", "reconnectWait": "100ms"})
	var mu sync.Mutex
	var old []*Delivery
	tries := map[string]int{}
	gate := make(chan struct{})
	handled := func(data string) error { // the first attempt at a new message fails, once A's acks are in
		mu.Lock()
		tries[data]++
		n := tries[data]
		mu.Unlock()
		if n > 1 {
			return nil
		}
		<-gate
		return fmt.Errorf("first attempt at %s fails", data)
	}
	_, err := a.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "wiped"}, func(d *Delivery) error {
		if d.Data[0] == 'm' {
			mu.Lock()
			defer mu.Unlock()
			old = append(old, d)
			return nil
		}
		go func() { _ = d.Settle(handled(string(d.Data))) }()
		return nil
	})
	require.NoError(t, err)
	_, js := natstest.Client(t, ns)
	waitConsumer(t, js, "wiped", "app-wiped")
	publishRaw(t, js, "wiped", "m", 5) // sequences 1-5 of the old stream
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(old) == 5 }, waitFor, tick)

	px.cut()
	require.Eventually(t, func() bool { return !a.conn().IsConnected() }, waitShort, tick)
	js = restartWiped(t, ns, opts, a, b)
	subscribe(t, b, "wiped", map[string]string{"concurrency": "parallel"}, func(_ context.Context, m *pubsub.NewMessage) error { return handled(string(m.Data)) })
	waitConsumer(t, js, "wiped", "app-wiped")
	publishRaw(t, js, "wiped", "p", 5) // sequences 1-5 of the new stream
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "wiped", "app-wiped")
		return err == nil && i != nil && i.NumAckPending == 5
	}, waitFor, tick, "the new messages are not delivered to B")
	mu.Lock()
	for _, d := range old {
		require.NoError(t, d.Ack())
	}
	mu.Unlock()
	px.restore()
	require.Eventually(t, func() bool { return a.conn().IsConnected() }, waitFor, tick)
	require.NoError(t, a.conn().Flush())
	close(gate)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range 5 {
			if tries[fmt.Sprintf("p%d", i)] < 2 {
				return false
			}
		}
		return true
	}, waitFor, tick, "a new message whose first attempt failed was not delivered again: acks of the old stream settled it")
}

// In an ordinary outage nats-server comes back with its store. The acks the
// app made while NATS was away wait for the stream to be read back, then
// settle the messages they were made for: none is delivered again.
func TestAcksMadeInAnOutageAreSentOnceTheStreamIsReadBack(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	px := newProxy(t, ns.Addr().String())
	ps, log := open(t, px.url(), map[string]string{"consumerID": "app", "reconnectWait": "100ms"})
	var mu sync.Mutex
	var held []*Delivery
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "outack"}, func(d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, d)
		return nil
	})
	require.NoError(t, err)
	waitConsumer(t, js, "outack", "app-outack")
	publishRaw(t, js, "outack", "m", 5)
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(held) == 5 }, waitFor, tick)

	px.cut()
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	mu.Lock()
	for _, d := range held {
		require.NoError(t, d.Ack())
	}
	mu.Unlock()
	px.restore()
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, "outack", "app-outack")
		return err == nil && i != nil && i.NumAckPending == 0 && i.AckFloor.Stream == 5
	}, waitFor, tick, "the acks made while NATS was away were not sent once it was back")
	require.NotContains(t, log.String(), "made again")
}

// A message turned down on arrival (its data unreadable, or not for the
// topic) is sent again after its ack wait anyway. A turn-down made while
// NATS is away is not kept for the reconnect: nats.go would send it before
// the stream is read back, to a stream that may be another by then.
func TestTurndownsAreNotKeptForTheReconnect(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	px.cut()
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	_ = ps.reply("$JS.ACK.turned.down.1.1.1.1.1", nakWithDelay(notForTopicDelay))
	buffered, err := ps.conn().Buffered()
	require.NoError(t, err)
	require.Zero(t, buffered, "a turn-down waits in nats.go's reconnect buffer")
}
