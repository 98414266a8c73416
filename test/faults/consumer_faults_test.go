//go:build faults

package faults

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// faultServeComponent runs the component binary on a new socket and returns
// daprd's client for it.
func faultServeComponent(t *testing.T, sockName string) (*procComponent, proto.PubSubClient) {
	t.Helper()
	comp := procNewComponent(t, faultSocketDir(t), sockName)
	comp.startServing(t, 30*time.Second)
	return comp, faultGRPC(t, comp.socket)
}

// faultCountMaxDeliveries counts the advisories JetStream publishes when a
// message reaches a consumer's maxDeliver and is no longer delivered: each
// one is a message dropped by the server. The count survives a restart of
// the server (the client resubscribes).
func faultCountMaxDeliveries(t *testing.T, url string) func() int {
	t.Helper()
	nc, _ := procClient(t, url)
	var n atomic.Int64
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatalf("subscribe to max deliveries advisories: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush the advisory subscription: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return func() int { return int(n.Load()) }
}

// faultConsumerState is what the consumers of one topic's stream have left
// to do.
type faultConsumerState struct {
	stream    string
	consumers []*natsjs.ConsumerInfo // those filtering on the topic
	pending   uint64                 // not yet delivered, over all consumers
	unacked   int                    // delivered and not acknowledged
}

// faultConsumersOf lists the consumers of the stream that stores topic and
// keeps those whose filter is topic.
func faultConsumersOf(ctx context.Context, js natsjs.JetStream, topic string) (faultConsumerState, error) {
	var s faultConsumerState
	name, err := js.StreamNameBySubject(ctx, topic)
	if err != nil {
		return s, fmt.Errorf("find the stream of %s: %w", topic, err)
	}
	s.stream = name
	st, err := js.Stream(ctx, name)
	if err != nil {
		return s, fmt.Errorf("stream %s: %w", name, err)
	}
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Config.FilterSubject != topic && !slices.Contains(ci.Config.FilterSubjects, topic) {
			continue
		}
		s.consumers = append(s.consumers, ci)
		s.pending += ci.NumPending
		s.unacked += ci.NumAckPending
	}
	if err := lister.Err(); err != nil {
		return s, fmt.Errorf("list the consumers of %s: %w", name, err)
	}
	return s, nil
}

// faultPoll calls cond every interval until it reports true, ctx ends or
// within passes; it reports the last answer of cond.
func faultPoll(ctx context.Context, within, interval time.Duration, cond func(context.Context) bool) bool {
	pctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		if cond(pctx) {
			return true
		}
		select {
		case <-pctx.Done():
			return cond(ctx)
		case <-time.After(interval):
		}
	}
}

// faultWaitDrained waits until every message whose publish returned nil was
// handled, or ctx ends, or JetStream has nothing left to give: every
// consumer of topic is without pending and unacknowledged messages on two
// polls in a row while the ledger did not move. Then what is missing will
// never come, and waiting longer only delays the report. It reports whether
// every published message was handled.
func faultWaitDrained(ctx context.Context, t *testing.T, l *faultLedger, url, topic string) bool {
	t.Helper()
	_, js := procClient(t, url)
	want := l.publishedCount()
	idle, lastHandled := 0, -1
	for {
		handled := l.handledCount()
		if handled >= want {
			return true
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := faultConsumersOf(ictx, js, topic)
		cancel()
		switch {
		case err == nil && len(s.consumers) > 0 && s.pending == 0 && s.unacked == 0 && handled == lastHandled:
			idle++
		default:
			idle = 0
		}
		if idle >= 2 {
			t.Logf("JetStream has nothing left to deliver on %s with %d of %d messages handled", topic, handled, want)
			return false
		}
		lastHandled = handled
		select {
		case <-ctx.Done():
			return l.handledCount() >= want
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TestFaultNATSKilledMaxDeliver is the kill -9 run of
// TestFaultNATSKilledAndRestarted with maxDeliver 3, consumed as daprd does
// over PullMessages from the component binary: two daprd instances on the
// same durable drain the run while nats-server is killed -9 and restarted on
// the same port and store. Redeliveries of acks lost in the kill and
// messages given back when pull requests broke both count against
// maxDeliver; once a message reaches it, JetStream drops it. Every message
// acknowledged by JetStream must still be handled.
func TestFaultNATSKilledMaxDeliver(t *testing.T) {
	total := faultMessages("FAULT_KILL9_MESSAGES", 100_000)
	const (
		topic      = "faults.kill9md"
		maxDeliver = 3
		outage     = 2 * time.Second // at least; until a publish failed
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	ns := procStartNATS(t, "nats-kill9md", "-sd", t.TempDir())
	maxDelivered := faultCountMaxDeliveries(t, ns.url())
	base := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "kill9md"}
	pub := faultPubSub(t, "fault-kill9md-pub", base)
	_, c := faultServeComponent(t, "faults-kill9md")
	subProps := faultProps(base, map[string]string{
		"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s", "maxInFlight": "1000", "maxAckPending": "4000",
		"maxDeliver": fmt.Sprint(maxDeliver),
	})
	l := newFaultLedger("k9md", total)
	for _, inst := range []string{"daprd-a", "daprd-b"} {
		if err := faultGRPCInit(ctx, c, inst, subProps); err != nil {
			t.Fatalf("Init %s: %v", inst, err)
		}
		faultStartPull(t, ctx, c, inst, topic, nil, l, func() bool { return true })
	}

	stats := &faultStats{}
	published := faultRunPublishers(ctx, pub, topic, l, total, 4, 500, stats)

	// Kill in the middle of the run, with publishers and consumers busy.
	if !l.waitPublished(ctx, total*3/10) {
		t.Fatalf("only %d of %d messages published before the kill", l.publishedCount(), total)
	}
	ns.Kill()
	killedAt := time.Now()
	handledAtKill := l.handledCount()
	failedBefore := stats.count()
	hit := faultPoll(ctx, 30*time.Second, 20*time.Millisecond, func(context.Context) bool {
		return time.Since(killedAt) >= outage && stats.count() > failedBefore
	})
	if !hit {
		t.Errorf("no publish failed within 30s of the kill: the kill did not hit the run")
	}
	procStart(t, ns.Proc)
	ns.waitReady(t, 30*time.Second)
	t.Logf("nats-server killed -9 at %d published / %d handled, back after %s", l.publishedCount(), handledAtKill, faultDur(time.Since(killedAt)))

	took, stored := faultFinishRun(ctx, t, l, ns.url(), topic, published, start)

	faultReport(t, "nats-kill9-restart-maxdeliver3", l, took, fmt.Sprintf("maxDeliver %d, over PullMessages; %d dropped by JetStream at maxDeliver; %s; stored=%d",
		maxDeliver, maxDelivered(), stats, stored))
}

// TestFaultConsumerDeleted deletes the durable consumer of a subscription
// through the JetStream API, as `nats consumer rm` does, while daprd drains
// a backlog from it over PullMessages. The component creates the consumer
// again and delivers the rest: nothing is lost, and what is delivered twice
// is at most what was in flight (maxInFlight) when the consumer went.
func TestFaultConsumerDeleted(t *testing.T) {
	total := faultMessages("FAULT_CONSUMER_DELETED_MESSAGES", 20_000)
	const (
		topic       = "faults.consumerdel"
		instance    = "pubsub"
		maxInFlight = 50
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	ns := procStartNATS(t, "nats-consumerdel", "-sd", t.TempDir())
	base := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "consumerdel"}
	pub := faultPubSub(t, "fault-consumerdel-pub", base)
	_, c := faultServeComponent(t, "faults-consumerdel")
	props := faultProps(base, map[string]string{"maxInFlight": fmt.Sprint(maxInFlight)})
	if err := faultGRPCInit(ctx, c, instance, props); err != nil {
		t.Fatalf("Init: %v", err)
	}
	l := newFaultLedger("cdel", total)
	faultStartPull(t, ctx, c, instance, topic, nil, l, func() bool { return true })

	// The component creates the stream and the durable in the background;
	// the admin finds the durable by listing the stream's consumers.
	_, js := procClient(t, ns.url())
	var before faultConsumerState
	if !faultPoll(ctx, 30*time.Second, 50*time.Millisecond, func(pctx context.Context) bool {
		s, err := faultConsumersOf(pctx, js, topic)
		before = s
		return err == nil && len(s.consumers) == 1
	}) {
		t.Fatalf("no single consumer for %s within 30s (found %d)", topic, len(before.consumers))
	}
	stream, name := before.stream, before.consumers[0].Name
	if before.consumers[0].Config.Durable == "" {
		t.Fatalf("consumer %s on %s is not durable (consumerID is set)", name, stream)
	}

	stats := &faultStats{}
	published := faultRunPublishers(ctx, pub, topic, l, total, 4, 500, stats)

	// Delete it in the middle of the drain, with a backlog behind it.
	if !l.waitHandled(ctx, total*3/10) {
		t.Fatalf("only %d of %d messages handled before the deletion", l.handledCount(), total)
	}
	var backlog uint64
	if info, err := js.Consumer(ctx, stream, name); err == nil {
		backlog = info.CachedInfo().NumPending
	}
	if err := js.DeleteConsumer(ctx, stream, name); err != nil {
		t.Fatalf("delete consumer %s on %s: %v", name, stream, err)
	}
	deletedAt := time.Now()
	publishedAtDelete, handledAtDelete := l.publishedCount(), l.handledCount()
	t.Logf("consumer %s on %s deleted at %d published / %d handled, %d not yet delivered", name, stream, publishedAtDelete, handledAtDelete, backlog)
	if handledAtDelete >= total {
		t.Fatalf("the subscriber had drained every message before the deletion")
	}

	// The component notices and creates it again.
	var after faultConsumerState
	if !faultPoll(ctx, time.Minute, 50*time.Millisecond, func(pctx context.Context) bool {
		s, err := faultConsumersOf(pctx, js, topic)
		after = s
		return err == nil && len(s.consumers) > 0 && s.consumers[0].Created.After(before.consumers[0].Created)
	}) {
		t.Fatalf("the consumer of %s was not created again within a minute of its deletion", topic)
	}
	recreated := time.Since(deletedAt)
	again := after.consumers[0]
	t.Logf("consumer %s created again %s after the deletion: deliver policy %s, start sequence %d, start time %v",
		again.Name, faultDur(recreated), again.Config.DeliverPolicy, again.Config.OptStartSeq, again.Config.OptStartTime)

	took, stored := faultFinishRun(ctx, t, l, ns.url(), topic, published, start)

	r := faultReport(t, "consumer-deleted", l, took, fmt.Sprintf("deleted at %d handled with %d not yet delivered; created again after %s; maxInFlight %d; %s; stored=%d",
		handledAtDelete, backlog, faultDur(recreated), maxInFlight, stats, stored))
	if r.duplicated > maxInFlight {
		t.Errorf("%d duplicate deliveries after the consumer was deleted, more than maxInFlight %d: the new consumer replayed messages already acknowledged",
			r.duplicated, maxInFlight)
	}
	if again.Name != name {
		t.Logf("the consumer was created again as %s, not as the durable %s", again.Name, name)
	}
}

// faultFinishRun waits for the publishers and for every message to be
// handled, and returns how long the run took and how many messages the
// stream stored.
func faultFinishRun(ctx context.Context, t *testing.T, l *faultLedger, url, topic string, published <-chan error, start time.Time) (time.Duration, uint64) {
	t.Helper()
	select {
	case err := <-published:
		if err != nil {
			t.Errorf("publishers gave up: %v", err)
		}
	case <-ctx.Done():
		t.Errorf("publishers did not finish in time")
	}
	if !faultWaitDrained(ctx, t, l, url, topic) {
		t.Errorf("handled %d of %d messages", l.handledCount(), l.publishedCount())
	}
	took := time.Since(start)
	return took, faultQuiesce(t, url, topic, 30*time.Second)
}
