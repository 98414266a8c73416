//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// rollingStallBound is the longest delivery may stop while one node of the
// cluster restarts: a new leader is elected within a second or two, and the
// subscriptions must follow it at once, not after a timeout of their own.
const rollingStallBound = 3 * time.Second

// publishStallBound is the longest publishing may stop while one node
// restarts. It allows one publish whose PubAck was lost while the stream's
// leader moved to time out (5 s) and be sent again, but not a publish held
// until the node closes the connection, which in lame duck mode comes only
// after the grace period.
const publishStallBound = 6 * time.Second

// rollingStop is how a rolling update stops one node.
type rollingStop struct {
	name   string
	config string // added to each node's configuration
	stop   func(node *procNATS) error
	total  int // messages, published one every 10 ms through all restarts
}

var rollingStops = []rollingStop{
	{name: "SIGTERM", total: 1500, stop: func(node *procNATS) error { return node.Stop(time.Minute) }},
	// Lame duck mode (nats-server --signal ldm) is how NATS recommends
	// shutting a server down in production: it hands its leaders over,
	// stops JetStream, and then closes its clients one by one, the first
	// after the grace period (10 s by default, as here). Until then the
	// component stays connected to it and works through its routes.
	{name: "lame duck", total: 5000, config: "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"10s\"", stop: func(node *procNATS) error {
		if err := node.Signal(syscall.SIGUSR2); err != nil {
			return err
		}
		if exited, err := node.Wait(time.Minute); !exited {
			return fmt.Errorf("still running a minute after lame duck mode began")
		} else if err != nil {
			return fmt.Errorf("exit after lame duck mode: %w", err)
		}
		return nil
	}},
}

// TestFaultClusterRollingRestart restarts the nodes of a three-node cluster
// one after another, with SIGTERM and in lame duck mode, waiting each time
// until the stream and the consumer are current again, as a rolling update
// of a NATS StatefulSet does. Publishes run at a steady pace to an R3
// stream, and two subscribers share a durable. Nothing acknowledged is
// lost, and after each restart delivery resumes within rollingStallBound.
func TestFaultClusterRollingRestart(t *testing.T) {
	for i, how := range rollingStops {
		t.Run(how.name, func(t *testing.T) { rollingRestart(t, how, fmt.Sprintf("rolling%d", i)) })
	}
}

func rollingRestart(t *testing.T, how rollingStop, prefix string) {
	total := how.total
	start := time.Now()
	cl := procStartCluster(t, prefix, 3, how.config)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	topic, stream, base := clusterTopic(cl, prefix)
	pub := faultPubSub(t, "fault-"+prefix+"-pub", base)
	l := newFaultLedger(prefix, total)
	subProps := faultProps(base, map[string]string{"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s"})
	var lastHandled atomic.Int64
	for i := range 2 {
		sub := faultPubSub(t, fmt.Sprintf("fault-%s-sub%d", prefix, i), subProps)
		handle := faultHandler(l)
		err := sub.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, func(ctx context.Context, m *pubsub.NewMessage) error {
			err := handle(ctx, m)
			lastHandled.Store(time.Now().UnixNano())
			return err
		})
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	stats := &faultStats{}
	var lastPublished atomic.Int64
	published := pacedPublisher(ctx, pub, topic, l, 0, total, 10*time.Millisecond, stats, &lastPublished)
	if !l.waitPublished(ctx, 300) {
		t.Fatalf("only %d of %d published before the restarts", l.publishedCount(), total)
	}
	_, js := procClient(t, cl.urls())
	durable := metadata.SanitizeName(prefix, topic)
	for _, node := range cl.nodes {
		if err := natstest.Await(time.Minute, 250*time.Millisecond, nil, func() error { return clusterCurrent(js, stream, durable) }); err != nil {
			t.Fatalf("before restarting %s: %v", node.Name, err)
		}
		stopped := time.Now()
		stall := watchGap(&lastHandled, func() bool { return l.publishedCount() > l.handledCount() })
		pubStall := watchGap(&lastPublished, func() bool { return l.publishedCount() < total })
		if err := how.stop(node); err != nil {
			t.Fatalf("stopping %s: %v", node.Name, err)
		}
		procStart(t, node.Proc)
		if err := node.WaitFor(2*time.Minute, 250*time.Millisecond, procJetStreamAnswers(node.url())); err != nil {
			t.Fatalf("%s after its restart: %v", node.Name, err)
		}
		if err := natstest.Await(2*time.Minute, 250*time.Millisecond, nil, func() error { return clusterCurrent(js, stream, durable) }); err != nil {
			t.Errorf("after restarting %s: %v", node.Name, err)
		}
		longest, _ := stall()
		longestPub, _ := pubStall()
		t.Logf("restarted %s in %s; delivery stopped for at most %s, publishing for at most %s; %d published / %d handled",
			node.Name, faultDur(time.Since(stopped)), faultDur(longest), faultDur(longestPub), l.publishedCount(), l.handledCount())
		if longest > rollingStallBound {
			t.Errorf("delivery stopped for %s while %s restarted (bound %s)", faultDur(longest), node.Name, rollingStallBound)
		}
		if longestPub > publishStallBound {
			t.Errorf("publishing stopped for %s while %s restarted (bound %s)", faultDur(longestPub), node.Name, publishStallBound)
		}
	}
	if err := <-published; err != nil {
		t.Errorf("publisher gave up: %v", err)
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d before the deadline", l.handledCount(), total)
	}
	stored := faultQuiesce(t, cl.urls(), topic, 30*time.Second)
	faultReport(t, "cluster-rolling-restart-"+strings.ReplaceAll(how.name, " ", "-"), l, time.Since(start), fmt.Sprintf("R3, 3 nodes restarted one after another (%s); %s; stored=%d", how.name, stats, stored))
}

// pacedPublisher publishes the ledger's messages [from, to) one at a time,
// one every pace, so that traffic runs through every restart.
func pacedPublisher(ctx context.Context, pub *jetstream.PubSub, topic string, l *faultLedger, from, to int, pace time.Duration, stats *faultStats, last *atomic.Int64) <-chan error {
	out := make(chan error, 1)
	go func() {
		tick := time.NewTicker(pace)
		defer tick.Stop()
		for i := from; i < to; i++ {
			if err := faultBulkPublish(ctx, pub, topic, l, i, i+1, stats); err != nil {
				out <- err
				return
			}
			last.Store(time.Now().UnixNano())
			select {
			case <-tick.C:
			case <-ctx.Done():
				out <- ctx.Err()
				return
			}
		}
		out <- nil
	}()
	return out
}

// clusterCurrent reports nil once the stream and the durable have a leader
// and every other replica is current.
func clusterCurrent(js natsjs.JetStream, stream, durable string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	if err := replicasCurrent("stream", st.CachedInfo().Cluster); err != nil {
		return err
	}
	c, err := st.Consumer(ctx, durable)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	return replicasCurrent("consumer", c.CachedInfo().Cluster)
}

func replicasCurrent(what string, ci *natsjs.ClusterInfo) error {
	if ci == nil || ci.Leader == "" || len(ci.Replicas) != 2 {
		return fmt.Errorf("%s: no leader with two replicas yet: %+v", what, ci)
	}
	for _, r := range ci.Replicas {
		if !r.Current || r.Offline || r.Lag != 0 {
			return fmt.Errorf("%s: replica %s is not current (lag %d, offline %v)", what, r.Name, r.Lag, r.Offline)
		}
	}
	return nil
}

// watchGap samples, until the returned function is called, the longest time
// since last while active holds, and when that gap ended.
func watchGap(last *atomic.Int64, active func() bool) func() (time.Duration, time.Time) {
	type gap struct {
		longest time.Duration
		at      time.Time
	}
	stop := make(chan struct{})
	result := make(chan gap, 1)
	go func() {
		var g gap
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				result <- g
				return
			case now := <-tick.C:
				if l := last.Load(); l > 0 && active() {
					if d := now.Sub(time.Unix(0, l)); d > g.longest {
						g = gap{d, now}
					}
				}
			}
		}
	}()
	return func() (time.Duration, time.Time) { close(stop); g := <-result; return g.longest, g.at }
}
