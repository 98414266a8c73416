package jetstream

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// tally records which payloads a handler saw, and how often.
type tally struct {
	mu   sync.Mutex
	seen map[string]int
	ch   chan string
}

func newTally() *tally { return &tally{seen: map[string]int{}, ch: make(chan string, 10000)} }

func (t *tally) add(data string) {
	t.mu.Lock()
	t.seen[data]++
	t.mu.Unlock()
	t.ch <- data
}

func (t *tally) count(data string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen[data]
}

func (t *tally) distinct() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.seen)
}

// payload is message i of a test, padded to size bytes.
func payload(i, size int) string {
	p := fmt.Sprintf("m%03d:", i)
	if size > len(p) {
		p += strings.Repeat("x", size-len(p))
	}
	return p
}

func key(data string) string { return data[:min(len(data), 5)] }

// unseenCases are the limits under which messages the app never saw must
// still reach it: maxDeliver 1 and 3, small and large messages.
var unseenCases = []struct{ maxDeliver, size int }{{1, 16}, {3, 16}, {1, 300 << 10}, {3, 300 << 10}}

// Messages fetched ahead and not yet seen by the app must not use up
// maxDeliver when the subscription is paused: with maxDeliver 1 they would
// never be delivered.
func TestPauseKeepsUnseenMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range unseenCases {
		t.Run(fmt.Sprintf("maxDeliver=%d/size=%d", tc.maxDeliver, tc.size), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ps, _ := open(t, ns.ClientURL(), map[string]string{
				"consumerID": "app", "maxDeliver": fmt.Sprint(tc.maxDeliver), "maxInFlight": "10",
			})
			got := newTally()
			release := make(chan struct{})
			var first sync.Once
			subscribe(t, ps, "paused", nil, func(_ context.Context, m *pubsub.NewMessage) error {
				got.add(key(string(m.Data)))
				first.Do(func() { <-release })
				return nil
			})
			for i := range 5 {
				publish(t, ps, "paused", payload(i, tc.size), nil)
			}
			assert.Equal(t, "m000:", recv(t, got.ch, waitFor))
			require.Eventually(t, func() bool {
				info, err := consumerInfo(js, "paused", "app-paused")
				return err == nil && info != nil && info.NumPending == 0
			}, waitFor, tick, "the backlog was not fetched ahead")

			require.NoError(t, ps.Pause(ctx(t)))
			close(release)
			nothing(t, got.ch, 500*time.Millisecond)
			require.NoError(t, ps.Resume(ctx(t)))
			for range 4 {
				recv(t, got.ch, waitFor)
			}
			assert.Equal(t, 5, got.distinct(), "every message handled")
			info := settledConsumer(t, js, "paused", "app-paused")
			assert.Equal(t, uint64(5), info.AckFloor.Stream)
			assert.Equal(t, uint64(5), info.Delivered.Consumer, "nothing was redelivered")
		})
	}
}

// A subscription made while the instance is paused (the app subscribes again
// between Pause and Resume) takes over what an ended subscription of its
// consumer left, and holds it for Resume like any message the app has not
// seen: behaviour.md gives such messages back only after 30 s of pause. They
// must not go back to JetStream at once, which uses up a delivery of each.
func TestSubscribeWhilePausedKeepsHandedOverMessages(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, buf := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "3", "maxInFlight": "10"})
	sctx, cancel := context.WithCancel(t.Context())
	held := make(chan *Delivery, 10)
	done, err := ps.SubscribeDeliveries(sctx, pubsub.SubscribeRequest{Topic: "pausedsub"}, func(d *Delivery) error {
		held <- d // never settled
		return nil
	})
	require.NoError(t, err)
	for i := range 3 {
		publish(t, ps, "pausedsub", fmt.Sprintf("m%d", i), nil)
	}
	for range 3 {
		recv(t, held, waitFor)
	}
	cancel()
	closedWithin(t, done, waitFor, "the first subscription ending")

	require.NoError(t, ps.Pause(ctx(t)))
	got := make(chan *Delivery, 10)
	_, err = ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "pausedsub"}, func(d *Delivery) error {
		got <- d
		return d.Ack()
	})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(buf.String(), "took over 3 messages") }, waitFor, tick,
		"the paused subscription did not take over what the ended one held")
	// Well short of 30 s of pause, nothing may go back.
	assert.Never(t, func() bool { return strings.Contains(buf.String(), "back to JetStream") }, 2*time.Second, tick,
		"the messages went back to JetStream as soon as the paused subscription took them over")
	require.NoError(t, ps.Resume(ctx(t)))
	for range 3 {
		d := recv(t, got, waitFor)
		assert.Equal(t, uint64(1), d.Deliveries, "%s: delivered again by JetStream, not handed over", d.Data)
	}
	info := settledConsumer(t, js, "pausedsub", "app-pausedsub")
	assert.Equal(t, uint64(3), info.Delivered.Consumer, "nothing was redelivered")
}

// A subscription that ends with messages its handler never saw hands them
// to the next subscription of the same consumer, without using up
// maxDeliver: daprd's stream broke, or daprd restarted.
func TestEndedSubscriptionHandsOver(t *testing.T) {
	t.Parallel()
	for _, tc := range unseenCases {
		t.Run(fmt.Sprintf("maxDeliver=%d/size=%d", tc.maxDeliver, tc.size), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ps, _ := open(t, ns.ClientURL(), map[string]string{
				"consumerID": "app", "maxDeliver": fmt.Sprint(tc.maxDeliver), "maxInFlight": "10",
			})
			sctx, cancel := context.WithCancel(t.Context())
			first := make(chan *Delivery, 10)
			done, err := ps.SubscribeDeliveries(sctx, pubsub.SubscribeRequest{Topic: "cut"}, func(d *Delivery) error {
				if len(first) > 0 {
					return errStopped // the stream broke: nothing after the first is handed on
				}
				first <- d
				return nil
			})
			require.NoError(t, err)
			for i := range 5 {
				publish(t, ps, "cut", payload(i, tc.size), nil)
			}
			recv(t, first, waitFor)
			require.Eventually(t, func() bool {
				info, err := consumerInfo(js, "cut", "app-cut")
				return err == nil && info != nil && info.NumPending == 0
			}, waitFor, tick, "the backlog was not fetched ahead")
			cancel()
			closedWithin(t, done, waitFor, "the first subscription ending")

			got := newTally()
			_, err = ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "cut"}, func(d *Delivery) error {
				got.add(key(string(d.Data)))
				return d.Ack()
			})
			require.NoError(t, err)
			for range 5 {
				recv(t, got.ch, waitFor)
			}
			assert.Equal(t, 5, got.distinct(), "every message handled")
			info := settledConsumer(t, js, "cut", "app-cut")
			assert.Equal(t, uint64(5), info.Delivered.Consumer, "nothing was redelivered")
		})
	}
}

// A Component initialised again replaces its instance: what the old one
// held reaches the new one's subscription.
func TestReInitHandsOver(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	props := map[string]string{"consumerID": "app", "maxDeliver": "1", "maxInFlight": "10"}
	old, _ := newInstance(t)
	md := pubsub.Metadata{}
	md.Name = "test"
	md.Properties = map[string]string{"natsURL": ns.ClientURL()}
	for k, v := range props {
		md.Properties[k] = v
	}
	require.NoError(t, old.Init(ctx(t), md))
	release := make(chan struct{})
	var once sync.Once
	got := newTally()
	handler := func(_ context.Context, m *pubsub.NewMessage) error {
		got.add(key(string(m.Data)))
		once.Do(func() { <-release })
		return nil
	}
	require.NoError(t, old.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "reinit"}, handler))
	for i := range 5 {
		publish(t, old, "reinit", payload(i, 16), nil)
	}
	recv(t, got.ch, waitFor)

	fresh, _ := newInstance(t)
	require.NoError(t, fresh.Init(ctx(t), md))
	t.Cleanup(func() { _ = fresh.Close() })
	closed := make(chan struct{})
	go func() { _ = old.Close(); close(closed) }()
	close(release)
	closedWithin(t, closed, waitFor, "closing the old instance")

	require.NoError(t, fresh.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "reinit"}, handler))
	require.Eventually(t, func() bool { return got.distinct() == 5 }, waitFor, tick, "every message handled")
	settledConsumer(t, js, "reinit", "app-reinit")
}

// A consumer an admin deleted is made again after the last acknowledged
// message, not from where the subscription started.
func TestDeletedConsumerResumesAfterAcked(t *testing.T) {
	t.Parallel()
	for _, durable := range []bool{true, false} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			props := map[string]string{}
			if durable {
				props["consumerID"] = "app"
			}
			ps, _ := open(t, ns.ClientURL(), props)
			got := newTally()
			subscribe(t, ps, "resume", nil, func(_ context.Context, m *pubsub.NewMessage) error {
				got.add(string(m.Data))
				return nil
			})
			for i := range 5 {
				publish(t, ps, "resume", payload(i, 0), nil)
			}
			var name string
			require.Eventually(t, func() bool {
				infos := consumerInfos(t, js, "resume")
				if len(infos) != 1 || infos[0].AckFloor.Stream != 5 {
					return false
				}
				name = infos[0].Name
				return true
			}, waitFor, tick, "the first five were not acked")

			require.NoError(t, js.DeleteConsumer(ctx(t), "resume", name))
			require.Eventually(t, func() bool { return len(consumerInfos(t, js, "resume")) == 1 }, waitFor, tick, "the consumer was not made again")
			publish(t, ps, "resume", "after", nil)
			require.Eventually(t, func() bool { return got.count("after") == 1 }, waitFor, tick, "the message after the deletion was not delivered")
			for i := range 5 {
				assert.Equal(t, 1, got.count(payload(i, 0)), "message %d was replayed", i)
			}
		})
	}
}

// Keep-alives follow the consumer's ack wait as the server has it: another
// replica lowering it in a rolling update must not make held messages
// redeliver.
func TestKeepAliveFollowsServerAckWait(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackWait": "30s"})
	held := make(chan *Delivery, 1)
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "ackwait"}, func(d *Delivery) error {
		held <- d
		return nil
	})
	require.NoError(t, err)
	publish(t, ps, "ackwait", "slow", nil)
	d := recv(t, held, waitFor)

	info, err := consumerInfo(js, "ackwait", "app-ackwait")
	require.NoError(t, err)
	cfg := info.Config
	// The subscription reads the consumer back every refreshBusy, so the
	// new wait must leave room for that, a tick and a loaded machine.
	cfg.AckWait = 4 * time.Second
	_, err = js.UpdateConsumer(ctx(t), "ackwait", cfg)
	require.NoError(t, err)
	start := time.Now()
	for time.Since(start) < 2*cfg.AckWait {
		info, err := consumerInfo(js, "ackwait", "app-ackwait")
		require.NoError(t, err)
		require.Zero(t, info.NumRedelivered, "the held message was redelivered after %s", time.Since(start).Round(time.Millisecond))
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, d.Ack())
	settledConsumer(t, js, "ackwait", "app-ackwait")
}

// An ephemeral subscription recovers when its stream is replaced by another
// that covers the topic.
func TestEphemeralRecoversFromReplacedStream(t *testing.T) {
	t.Parallel()
	for _, durable := range []bool{true, false} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			keepAccountStore(t, js)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"replaced.>"}})
			require.NoError(t, err)
			props := map[string]string{"autoProvision": "false"}
			if durable {
				props["consumerID"] = "app"
			}
			ps, _ := open(t, ns.ClientURL(), props)
			h, got := collect()
			subscribe(t, ps, "replaced.a", nil, h)
			publish(t, ps, "replaced.a", "before", nil)
			assert.Equal(t, "before", string(recv(t, got, waitFor).Data))

			require.NoError(t, js.DeleteStream(ctx(t), "OLD"))
			_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"replaced.>"}})
			require.NoError(t, err)
			require.Eventually(t, func() bool { return len(consumerInfos(t, js, "NEW")) == 1 }, waitFor, tick, "no consumer on the new stream")
			_, err = js.Publish(ctx(t), "replaced.a", []byte("after"))
			require.NoError(t, err)
			assert.Equal(t, "after", string(recv(t, got, waitFor).Data))
		})
	}
}

// proxy forwards TCP connections to target until cut, which drops every
// connection at once, as a killed server or a broken network does.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	open   bool
	marker []byte        // see dropFrom
	held   chan struct{} // closed when marker was seen
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, open: true}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if !p.open {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { p.forward(up, c); _ = up.Close() }()
		go func() { p.forward(c, up); _ = c.Close() }()
	}
}

// forward passes on what src sends to dst, until a read holds the marker of
// dropFrom: from then on, what src sends is lost.
func (p *proxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	dropping := false
	for {
		n, err := src.Read(buf)
		if n > 0 && !dropping {
			if dropping = p.drops(buf[:n]); !dropping {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// drops reports whether b holds the marker of dropFrom, which it then
// disarms.
func (p *proxy) drops(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.marker == nil || !bytes.Contains(b, p.marker) {
		return false
	}
	p.marker = nil
	close(p.held)
	return true
}

// dropFrom makes the proxy lose what one side of a connection sends, from
// the first read that contains marker on, as when NATS went away before the
// client noticed; the channel is closed then.
func (p *proxy) dropFrom(marker string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.marker, p.held = []byte(marker), make(chan struct{})
	return p.held
}

// cut drops every connection and refuses new ones until restore.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = false
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.open = true
	p.mu.Unlock()
}

// After NATS comes back, delivery resumes at once, however long it was away
// and whatever the heartbeat: the server lost the open pull requests
// without a word, as when it is killed.
func TestDeliveryResumesSoonAfterReconnect(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"consumerID": "app", "reconnectWait": "100ms", "heartbeat": "30s"})
	h, got := collect()
	subscribe(t, ps, "outage", nil, h)
	publish(t, ps, "outage", "before", nil)
	recv(t, got, waitFor)

	px.cut()
	o := *opts
	o.Port = ns.Addr().(*net.TCPAddr).Port
	natstest.Stop(ns)
	back := natstest.Run(t, &o)
	t.Cleanup(func() { natstest.Stop(back) })
	time.Sleep(5 * time.Second) // the outage itself, not a wait for a condition
	px.restore()

	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, 10*time.Millisecond)
	_, js := natstest.Client(t, back)
	_, err := js.Publish(ctx(t), "outage", []byte("after"))
	require.NoError(t, err)
	published := time.Now()
	assert.Equal(t, "after", string(recv(t, got, 2*time.Minute).Data))
	assert.Less(t, time.Since(published), time.Second, "delivery resumed late")
	// Closed here, while NATS is still up: the cleanups stop the server first.
	require.NoError(t, ps.Close())
}

// Pull requests made while NATS is away wait in nats.go's reconnect buffer
// and reach the server with the reconnect, next to the ones the reconnect
// starts over with: a backlog that built up meanwhile must still arrive at
// most maxInFlight at a time, as the window promises (and concurrency
// parallel relies on for the number of running handlers).
func TestWindowKeptAfterAnOutage(t *testing.T) {
	t.Parallel()
	const window, backlog = 5, 40
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"consumerID": "app", "reconnectWait": "100ms", "maxInFlight": fmt.Sprint(window)})
	var mu sync.Mutex
	var held []*Delivery
	heldNow := func() int { mu.Lock(); defer mu.Unlock(); return len(held) }
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "outwin"}, func(d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, d)
		return nil
	})
	require.NoError(t, err)
	publish(t, ps, "outwin", "before", nil)
	require.Eventually(t, func() bool { return heldNow() == 1 }, waitFor, tick)
	mu.Lock()
	require.NoError(t, held[0].Ack())
	held = nil
	mu.Unlock()

	px.cut()
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	for i := range backlog {
		_, err := js.Publish(ctx(t), "outwin", []byte(payload(i, 0)))
		require.NoError(t, err)
	}
	time.Sleep(6 * time.Second) // the outage itself, not a wait for a condition
	px.restore()
	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, tick)

	require.Eventually(t, func() bool { return heldNow() >= window }, waitShort, tick, "delivery did not resume")
	// Never checks in goroutines of its own, which may outlive it.
	var most atomic.Int64
	most.Store(int64(window))
	assert.Never(t, func() bool {
		n := int64(heldNow())
		for seen := most.Load(); n > seen && !most.CompareAndSwap(seen, n); seen = most.Load() {
		}
		return most.Load() > int64(window)
	}, 2*time.Second, tick, "maxInFlight is %d, yet the app was handed %d unsettled messages at once after the outage", window, heldNow())
	t.Logf("held at once after the outage: %d (maxInFlight %d)", most.Load(), window)
}

// A durable whose ack policy the server cannot change fails the subscription
// with an error that names the setting and the fix, and Ping reports it:
// acking as the server does not expect would lose or repeat messages.
func TestAckPolicyTheServerKeepsFailsTheSubscription(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ have, want string }{{"none", "explicit"}, {"explicit", "none"}} {
		t.Run(tc.have+" to "+tc.want, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			first, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackPolicy": tc.have})
			h, got := collect()
			sctx, cancel := context.WithCancel(t.Context())
			require.NoError(t, first.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "policy"}, h))
			publish(t, first, "policy", "m1", nil)
			recv(t, got, waitFor)
			cancel()

			second, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackPolicy": tc.want})
			fails, _ := failing(1)
			subscribe(t, second, "policy", nil, fails)
			var pingErr error
			require.Eventually(t, func() bool {
				pingErr = second.Ping(ctx(t))
				return pingErr != nil
			}, waitFor, tick, "Ping did not report the failing subscription")
			assert.Contains(t, pingErr.Error(), `topic "policy"`)
			assert.Contains(t, pingErr.Error(), "has ackPolicy "+tc.have+", and JetStream cannot change it to "+tc.want)
			assert.Contains(t, pingErr.Error(), "nats consumer rm policy app-policy")
			assert.Contains(t, log.String(), "level=error")
			info, err := consumerInfo(js, "policy", "app-policy")
			require.NoError(t, err)
			assert.Equal(t, tc.have, ackPolicyName(info.Config.AckPolicy), "the consumer is left as it is")
		})
	}
}

// A subscription that retrying cannot set up (here a consumer with more
// replicas than the cluster has servers) is not a silent stall: Ping names
// it once the error has lasted stuckAfter.
func TestStuckSubscriptionFailsPing(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "replicas": "3"})
	h, _ := collect()
	subscribe(t, ps, "stuck", nil, h)
	require.NoError(t, ps.Ping(ctx(t)), "a fresh error is not yet a stall")
	var pingErr error
	require.Eventually(t, func() bool {
		pingErr = ps.Ping(ctx(t))
		return pingErr != nil
	}, stuckAfter+waitShort, tick, "Ping never reported the stuck subscription")
	assert.Contains(t, pingErr.Error(), `topic "stuck"`)
	assert.Contains(t, pingErr.Error(), "replicas")
	// A warning at first, since retrying might fix it; an error once it
	// has lasted.
	assert.Contains(t, log.String(), "level=warning")
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "level=error") }, waitShort, tick, "log: %s", log)
}

// Messages held for long (a slow app, or daprd handling them concurrently)
// must not keep the rest of the window empty: a subscription fills all of
// maxInFlight, even when less than half of it is free.
func TestWindowFillsWhileMessagesAreHeld(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "50"})
	var mu sync.Mutex
	var held []*Delivery
	seen := 0
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "window"}, func(d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen <= 10 {
			return d.Ack()
		}
		held = append(held, d)
		return nil
	})
	require.NoError(t, err)
	for i := range 70 {
		publish(t, ps, "window", payload(i, 0), nil)
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) == 50
	}, waitFor, tick, "the window of 50 was not filled while 40 or more were held")
	assert.Never(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) > 50
	}, 500*time.Millisecond, tick, "more than maxInFlight held")
}

// Messages waiting behind a slow handler are kept alive from the moment they
// arrive: none is delivered a second time while the first is handled.
func TestMessagesBehindASlowHandlerAreKeptAlive(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "ackWait": "1s", "maxInFlight": "10", "deliverAll": "true"})
	for i := range 3 {
		publish(t, ps, "behind", payload(i, 0), nil)
	}
	got := newTally()
	subscribe(t, ps, "behind", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		got.add(string(m.Data))
		time.Sleep(1500 * time.Millisecond) // the slow handler itself
		return nil
	})
	for range 3 {
		recv(t, got.ch, waitFor)
	}
	info := settledConsumer(t, js, "behind", "app-behind")
	assert.Zero(t, info.NumRedelivered, "a message was redelivered while it waited")
	for i := range 3 {
		assert.Equal(t, 1, got.count(payload(i, 0)), "message %d handled more than once", i)
	}
}

// Messages waiting for the next subscription after theirs ended are kept
// alive while they wait: past half the ack wait, none is redelivered.
func TestHandedOverMessagesKeptAlive(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "10", "ackWait": "3s"})
	leaveFiveOnDesk(t, ps, js, "waits")
	before := inProgressSent(ps, "waits")
	time.Sleep(2 * time.Second) // past half the ack wait, while the messages wait
	// The desk's keep-alives count as InProgress sent, as the subscription's do.
	assert.GreaterOrEqual(t, inProgressSent(ps, "waits")-before, uint64(5), "keep-alives of waiting messages counted")

	got := make(chan string, 10)
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "waits"}, func(d *Delivery) error {
		got <- string(d.Data)
		return d.Ack()
	})
	require.NoError(t, err)
	for range 5 {
		recv(t, got, waitFor)
	}
	info := settledConsumer(t, js, "waits", "app-waits")
	assert.Equal(t, uint64(5), info.Delivered.Consumer, "nothing was redelivered")
}

// inProgressSent is the InProgress counter of topic's subscriptions.
func inProgressSent(ps *PubSub, topic string) uint64 {
	var n uint64
	for _, s := range ps.Stats().Subscriptions {
		if s.Topic == topic {
			n += s.InProgress
		}
	}
	return n
}

// Messages on their last allowed delivery that wait for the next subscriber
// are not given back when the handover bound passes: JetStream would not
// deliver them again, so giving them back would lose them. Not parallel: it
// sweeps the process's desk with a clock past the bound.
func TestHandedOverLastDeliveriesWaitPastTheBound(t *testing.T) {
	for _, tc := range []struct {
		maxDeliver string
		kept       bool
	}{{"1", true}, {"3", false}} {
		t.Run("maxDeliver "+tc.maxDeliver, func(t *testing.T) {
			ns, js := startNATS(t)
			ps, logs := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "10", "maxDeliver": tc.maxDeliver, "ackWait": "30s"})
			leaveFiveOnDesk(t, ps, js, "late")

			desk.sweep(time.Now().Add(handoverTimeout + time.Second))

			got := make(chan string, 10)
			_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "late"}, func(d *Delivery) error {
				got <- string(d.Data)
				return d.Ack()
			})
			require.NoError(t, err)
			if !tc.kept {
				// Given back: JetStream delivers them again, as it may.
				for range 5 {
					recv(t, got, waitFor)
				}
				return
			}
			for range 5 {
				recv(t, got, waitFor)
			}
			info := settledConsumer(t, js, "late", "app-late")
			assert.Equal(t, uint64(5), info.Delivered.Consumer, "handed over, not given back")
			assert.Contains(t, logs.String(), `5 messages of consumer \"app-late\" on stream \"late\"`)
			assert.Contains(t, logs.String(), "keep waiting here for the next one, since JetStream would not deliver them again (delivery 1 of maxDeliver 1)")
		})
	}
}

// leaveFiveOnDesk publishes five messages to topic and subscribes app to it
// with a handler that takes the first and stops; once the other four are
// fetched ahead, it ends the subscription, so that the five wait on the desk.
func leaveFiveOnDesk(t *testing.T, ps *PubSub, js natsjs.JetStream, topic string) {
	t.Helper()
	sctx, cancel := context.WithCancel(t.Context())
	first := make(chan *Delivery, 10)
	done, err := ps.SubscribeDeliveries(sctx, pubsub.SubscribeRequest{Topic: topic}, func(d *Delivery) error {
		if len(first) > 0 {
			return errStopped
		}
		first <- d
		return nil
	})
	require.NoError(t, err)
	for i := range 5 {
		publish(t, ps, topic, fmt.Sprint(i), nil)
	}
	recv(t, first, waitFor)
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, topic, "app-"+topic)
		return err == nil && info != nil && info.NumPending == 0
	}, waitFor, tick, "the backlog was not fetched ahead")
	cancel()
	closedWithin(t, done, waitFor, "the first subscription ending")
}

// Closing the last instance gives back what waits on the desk; what
// JetStream will not deliver again is named in the log, not lost unseen.
func TestClosingGivesBackLastDeliveriesLoudly(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, logs := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "10", "maxDeliver": "1", "ackWait": "30s"})
	leaveFiveOnDesk(t, ps, js, "closing")
	require.NoError(t, ps.Close())
	assert.Contains(t, logs.String(), "5 messages that waited for a subscriber were given back as the last instance on their connection closed, although JetStream will not deliver them again")
}

// A message that makes daprd crash still reaches maxDeliver, and the
// messages daprd got behind it keep their deliveries. Like daprd 1.18, which
// handles one message at a time, each subscription gets all five and
// answers none before it ends; the first in line is the one it stopped on.
// After maxEndsFirstInLine+1 such ends, that one goes back to JetStream as
// a failed delivery and the others still wait, on their first delivery.
func TestCrashingMessageReachesMaxDeliverAndSparesThoseBehind(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, logs := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxInFlight": "10", "maxDeliver": "2", "ackWait": "30s"})
	for round := range maxEndsFirstInLine + 1 {
		sctx, cancel := context.WithCancel(t.Context())
		got := make(chan *Delivery, 10)
		done, err := ps.SubscribeDeliveries(sctx, pubsub.SubscribeRequest{Topic: "crash"}, func(d *Delivery) error {
			got <- d
			return nil
		})
		require.NoError(t, err)
		if round == 0 {
			for i := range 5 {
				publish(t, ps, "crash", fmt.Sprint(i), nil)
			}
		}
		for range 5 {
			recv(t, got, waitFor)
		}
		cancel()
		closedWithin(t, done, waitFor, "the subscription ending")
	}
	assert.Contains(t, logs.String(), `message 1 of stream \"crash\" was the first one daprd had not answered when 4 subscriptions ended`)

	deliveries := map[string]uint64{}
	got := make(chan *Delivery, 10)
	_, err := ps.SubscribeDeliveries(t.Context(), pubsub.SubscribeRequest{Topic: "crash"}, func(d *Delivery) error {
		got <- d
		return d.Ack()
	})
	require.NoError(t, err)
	for range 5 {
		d := recv(t, got, waitFor)
		deliveries[string(d.Data)] = d.Deliveries
	}
	assert.Equal(t, map[string]uint64{"0": 2, "1": 1, "2": 1, "3": 1, "4": 1}, deliveries,
		"the crashing message came back as its second delivery, the others on their first")
	settledConsumer(t, js, "crash", "app-crash")
}

// apiCounter counts the JetStream API requests that reach a server, as
// `nats server report jetstream` does, and the pull requests among them
// apart.
type apiCounter struct {
	mu         sync.Mutex
	api, pulls int
	bySubject  map[string]int
}

// countAPI subscribes a plain client to every JetStream API subject of ns,
// following it through restarts on the same port.
func countAPI(t *testing.T, url string) *apiCounter {
	t.Helper()
	c := &apiCounter{bySubject: map[string]int{}}
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	_, err = nc.Subscribe("$JS.API.>", func(m *nats.Msg) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if strings.HasPrefix(m.Subject, "$JS.API.CONSUMER.MSG.NEXT.") {
			c.pulls++
			return
		}
		c.api++
		parts := strings.SplitN(m.Subject, ".", 5)
		c.bySubject[strings.Join(parts[:min(4, len(parts))], ".")]++
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return c
}

func (c *apiCounter) read() (api, pulls int, by map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	by = map[string]int{}
	for k, v := range c.bySubject {
		by[k] = v
	}
	return c.api, c.pulls, by
}

// subscribeIdle subscribes ps to topics topics named by format and a
// number, and waits until each has found its consumer.
func subscribeIdle(t *testing.T, ps *PubSub, format string, topics int) {
	t.Helper()
	h, _ := collect()
	for i := range topics {
		subscribe(t, ps, fmt.Sprintf(format, i), nil, h)
	}
	require.Eventually(t, func() bool {
		n := 0
		for _, s := range ps.Stats().Subscriptions {
			if s.ConsumerKnown {
				n++
			}
		}
		return n == topics
	}, waitFor, tick)
}

// Many idle subscriptions to topics of one stream (an app with one stream
// for its topics) each read their consumer back now and then, but check
// the stream's subjects (for a topic an operator moved) together: reading
// the same stream once per topic would send JetStream as many identical
// stream info requests as the app has topics, every period. Not parallel:
// it shortens refreshIdle for the instance it creates.
func TestIdleSubscriptionsShareStreamReads(t *testing.T) {
	const topics = 40
	const every, window = 300 * time.Millisecond, 3 * time.Second
	old := refreshIdle
	refreshIdle = every
	t.Cleanup(func() { refreshIdle = old })

	ns := natstest.Start(t)
	counter := countAPI(t, ns.ClientURL())
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "SHARED", "streamSubjects": "shared.>"})
	subscribeIdle(t, ps, "shared.t%02d", topics)

	_, _, before := counter.read()
	time.Sleep(window) // the observation window
	_, _, after := counter.read()
	consumerReads := after["$JS.API.CONSUMER.INFO"] - before["$JS.API.CONSUMER.INFO"]
	streamReads := after["$JS.API.STREAM.INFO"] - before["$JS.API.STREAM.INFO"]
	t.Logf("over %s with %d topics: %d consumer reads, %d stream reads", window, topics, consumerReads, streamReads)
	require.Positive(t, consumerReads, "the consumers were not read back at all")
	// One read per period per stream, with ample room for jitter and
	// timing, is far below one per period per topic.
	most := 3 * int(window/every)
	assert.LessOrEqual(t, streamReads, most, "the one stream was read %d times in %s for %d topics, per topic rather than per stream", streamReads, window, topics)
}

// After NATS comes back, every subscription reads its consumer back at
// once; the idle reads that follow must not stay in step, or an app with
// many topics sends JetStream all of them in one burst every period, for
// good. Not parallel: it shortens refreshIdle for the instance it creates.
func TestIdleConsumerReadsSpreadAfterARestart(t *testing.T) {
	const topics = 40
	const every = 8 * time.Second
	old := refreshIdle
	refreshIdle = every
	t.Cleanup(func() { refreshIdle = old })

	ns, opts := startRestartable(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "SPREAD", "streamSubjects": "spread.>", "reconnectWait": "50ms"})
	subscribeIdle(t, ps, "spread.t%02d", topics)

	natstest.Stop(ns)
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	back := runAgain(t, opts)
	var mu sync.Mutex
	var reads []time.Time
	nc, _ := natstest.Client(t, back)
	_, err := nc.Subscribe("$JS.API.CONSUMER.INFO.>", func(*nats.Msg) {
		mu.Lock()
		reads = append(reads, time.Now())
		mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, tick)
	reconnected := time.Now()
	// Through the first idle period after the reconnect, with room for
	// the spread.
	time.Sleep(every * 3 / 2) // the observation window

	mu.Lock()
	defer mu.Unlock()
	start := reconnected.Add(every / 2) // the idle reads, not those of the reconnect
	most := 0
	for i, at := range reads {
		if at.Before(start) {
			continue
		}
		n := 0
		for _, other := range reads[i:] {
			if other.Sub(at) < 300*time.Millisecond {
				n++
			}
		}
		most = max(most, n)
	}
	t.Logf("%d consumer reads after the restart; at most %d of the %d topics within 300 ms of each other in the idle period", len(reads), most, topics)
	assert.LessOrEqual(t, most, topics/2, "the idle reads of the consumers came in one burst")
}

// Subscriptions whose topics no stream covers (autoProvision off, the
// streams not made yet) look for one again and again, each look-up a
// JetStream API request that the meta leader answers. Once the problem has
// lasted long enough to fail Ping, it waits for an operator: an app with
// many such topics must not keep sending one request per topic every 2 s.
func TestFailingSubscriptionsRetryAtABoundedRate(t *testing.T) {
	t.Parallel()
	const topics = 100
	const window = 4 * time.Second
	ns := natstest.Start(t)
	counter := countAPI(t, ns.ClientURL())
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "autoProvision": "false"})
	h, _ := collect()
	for i := range topics {
		subscribe(t, ps, fmt.Sprintf("nostream.t%03d", i), nil, h)
	}
	require.Eventually(t, func() bool { return ps.Ping(ctx(t)) != nil }, stuckAfter+waitFor, tick, "the subscriptions never failed Ping")
	time.Sleep(retryMax) // the attempts planned before the problem lasted stuckAfter

	before, _, _ := counter.read()
	time.Sleep(window) // the observation window
	after, _, _ := counter.read()
	t.Logf("%d API requests in %s from %d subscriptions without a stream", after-before, window, topics)
	assert.LessOrEqual(t, after-before, topics, "more than one look-up per subscription in %s", window)

	// Once the stream is made, every topic is delivered again in bounded
	// time.
	_, js := natstest.Client(t, ns)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "LATE", Subjects: []string{"nostream.>"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return ps.Ping(ctx(t)) == nil }, 2*waitFor, tick, "the subscriptions did not start once the stream was made")
}
