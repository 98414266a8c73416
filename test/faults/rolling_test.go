//go:build faults

package faults

import (
	"context"
	"fmt"
	"sync/atomic"
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

// TestFaultClusterRollingRestart restarts the nodes of a three-node cluster
// one after another with SIGTERM, waiting each time until the stream and the
// consumer are current again, as a rolling update of a NATS StatefulSet
// does. Publishes run at a steady pace to an R3 stream, and two subscribers
// share a durable. Nothing acknowledged is lost, and after each restart
// delivery resumes within rollingStallBound.
func TestFaultClusterRollingRestart(t *testing.T) {
	const (
		total  = 1500
		topic  = "faults.rolling"
		stream = "FAULTROLLING"
	)
	start := time.Now()
	cl := procStartCluster(t, "rolling", 3)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	base := map[string]string{
		"natsURL": cl.urls(), "reconnectWait": "100ms", "consumerID": "rolling",
		"streamName": stream, "streamSubjects": topic, "streamReplicas": "3",
	}
	pub := faultPubSub(t, "fault-rolling-pub", base)
	l := newFaultLedger("ro", total)
	subProps := faultProps(base, map[string]string{"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s"})
	var lastHandled atomic.Int64
	for i := range 2 {
		sub := faultPubSub(t, fmt.Sprintf("fault-rolling-sub%d", i), subProps)
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
	published := pacedPublisher(ctx, pub, topic, l, total, 10*time.Millisecond, stats)
	if !l.waitPublished(ctx, 300) {
		t.Fatalf("only %d of %d published before the restarts", l.publishedCount(), total)
	}
	_, js := procClient(t, cl.urls())
	durable := metadata.SanitizeName("rolling", topic)
	for _, node := range cl.nodes {
		if err := natstest.Await(time.Minute, 250*time.Millisecond, nil, func() error { return clusterCurrent(js, stream, durable) }); err != nil {
			t.Fatalf("before restarting %s: %v", node.Name, err)
		}
		stopped := time.Now()
		stall := watchStall(l, &lastHandled)
		if err := node.Stop(time.Minute); err != nil {
			t.Fatalf("stopping %s: %v", node.Name, err)
		}
		procStart(t, node.Proc)
		if err := node.WaitFor(2*time.Minute, 250*time.Millisecond, procJetStreamAnswers(node.url())); err != nil {
			t.Fatalf("%s after its restart: %v", node.Name, err)
		}
		if err := natstest.Await(2*time.Minute, 250*time.Millisecond, nil, func() error { return clusterCurrent(js, stream, durable) }); err != nil {
			t.Errorf("after restarting %s: %v", node.Name, err)
		}
		longest := stall()
		t.Logf("restarted %s in %s; delivery stopped for at most %s; %d published / %d handled", node.Name, faultDur(time.Since(stopped)), faultDur(longest), l.publishedCount(), l.handledCount())
		if longest > rollingStallBound {
			t.Errorf("delivery stopped for %s while %s restarted (bound %s)", faultDur(longest), node.Name, rollingStallBound)
		}
	}
	if err := <-published; err != nil {
		t.Errorf("publisher gave up: %v", err)
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d before the deadline", l.handledCount(), total)
	}
	stored := faultQuiesce(t, cl.urls(), topic, 30*time.Second)
	faultReport(t, "cluster-rolling-restart", l, time.Since(start), fmt.Sprintf("R3, 3 nodes restarted one after another with SIGTERM; %s; stored=%d", stats, stored))
}

// pacedPublisher publishes the ledger's messages one at a time, one every
// pace, so that traffic runs through every restart.
func pacedPublisher(ctx context.Context, pub *jetstream.PubSub, topic string, l *faultLedger, total int, pace time.Duration, stats *faultStats) <-chan error {
	out := make(chan error, 1)
	go func() {
		tick := time.NewTicker(pace)
		defer tick.Stop()
		for i := range total {
			if err := faultBulkPublish(ctx, pub, topic, l, i, i+1, stats); err != nil {
				out <- err
				return
			}
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

// watchStall samples, until the returned function is called, how long no
// message was handled while some were waiting, and returns the longest.
func watchStall(l *faultLedger, lastHandled *atomic.Int64) func() time.Duration {
	stop := make(chan struct{})
	result := make(chan time.Duration, 1)
	go func() {
		var longest time.Duration
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				result <- longest
				return
			case now := <-tick.C:
				if last := lastHandled.Load(); last > 0 && l.publishedCount() > l.handledCount() {
					longest = max(longest, now.Sub(time.Unix(0, last)))
				}
			}
		}
	}()
	return func() time.Duration { close(stop); return <-result }
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
