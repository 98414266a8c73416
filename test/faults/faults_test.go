//go:build faults

package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/pluggable"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// faultLedger tracks every message of a scenario by its index: whether its
// publish returned nil, and each delivery. A delivery of a message the test
// already handled, or is still handling, is a duplicate; a message whose
// publish returned nil and that was never handled is lost.
type faultLedger struct {
	prefix string
	n      int

	mu         sync.Mutex
	published  []bool
	state      []uint8 // faultIdle, faultBusy, faultDone
	deliveries []int32
	dups       int
	handled    int
	nPublished int
	firstAt    time.Time
	changed    chan struct{}
}

const (
	faultIdle uint8 = iota
	faultBusy
	faultDone
)

func newFaultLedger(prefix string, n int) *faultLedger {
	return &faultLedger{
		prefix: prefix, n: n,
		published: make([]bool, n), state: make([]uint8, n), deliveries: make([]int32, n),
		changed: make(chan struct{}, 1),
	}
}

// id is the de-duplication id of message i (msgId metadata).
func (l *faultLedger) id(i int) string { return l.prefix + "-" + strconv.Itoa(i) }

// payload is the body of message i.
func (l *faultLedger) payload(i int) []byte { return []byte(l.id(i)) }

// index parses a payload or id back; -1 if it is not one of ours.
func (l *faultLedger) index(b []byte) int {
	s, ok := strings.CutPrefix(string(b), l.prefix+"-")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i >= l.n {
		return -1
	}
	return i
}

func (l *faultLedger) notify() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// markPublished records that the publish of message i returned nil.
func (l *faultLedger) markPublished(i int) {
	l.mu.Lock()
	if !l.published[i] {
		l.published[i] = true
		l.nPublished++
	}
	l.mu.Unlock()
	l.notify()
}

func (l *faultLedger) publishedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nPublished
}

// deliver records a delivery of message i, which the test now works on. It
// reports false for a duplicate.
func (l *faultLedger) deliver(i int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstAt.IsZero() {
		l.firstAt = time.Now()
	}
	l.deliveries[i]++
	if l.state[i] != faultIdle {
		l.dups++
		return false
	}
	l.state[i] = faultBusy
	return true
}

// done records that the test handled message i successfully (and acked it).
func (l *faultLedger) done(i int) {
	l.mu.Lock()
	if l.state[i] != faultDone {
		l.state[i] = faultDone
		l.handled++
	}
	l.mu.Unlock()
	l.notify()
}

// release records that the test gave message i back unhandled (it was held
// when its stream was cut, or its handler failed): a redelivery is expected.
func (l *faultLedger) release(i int) {
	l.mu.Lock()
	if l.state[i] == faultBusy {
		l.state[i] = faultIdle
	}
	l.mu.Unlock()
}

func (l *faultLedger) handledCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handled
}

func (l *faultLedger) firstDelivery() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstAt
}

// waitHandled waits until n messages were handled, or ctx ends.
func (l *faultLedger) waitHandled(ctx context.Context, n int) bool {
	for {
		if l.handledCount() >= n {
			return true
		}
		select {
		case <-l.changed:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return l.handledCount() >= n
		}
	}
}

// waitPublished waits until n publishes returned nil, or ctx ends.
func (l *faultLedger) waitPublished(ctx context.Context, n int) bool {
	for {
		if l.publishedCount() >= n {
			return true
		}
		select {
		case <-l.changed:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return l.publishedCount() >= n
		}
	}
}

// faultDur rounds d for reports: to 10ms under a second, else to 100ms.
func faultDur(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// faultResult is the outcome of a scenario.
type faultResult struct {
	messages    int // messages whose publish returned nil
	lost        int // of those, never handled
	duplicated  int // deliveries of a message already handled or in hand
	unpublished int // publishes that never returned nil (the test gave up)
	lostSample  []int
}

func (l *faultLedger) result() faultResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r faultResult
	for i := range l.n {
		if !l.published[i] {
			r.unpublished++
			continue
		}
		r.messages++
		if l.state[i] != faultDone {
			r.lost++
			if len(r.lostSample) < 10 {
				r.lostSample = append(r.lostSample, i)
			}
		}
	}
	r.duplicated = l.dups
	return r
}

// faultReport logs the one-line summary the closing note is built from, then
// fails the test if anything was lost or never published.
func faultReport(t *testing.T, scenario string, l *faultLedger, took time.Duration, note string) faultResult {
	t.Helper()
	r := l.result()
	line := fmt.Sprintf("FAULT %s: messages=%d lost=%d duplicated=%d time=%s", scenario, r.messages, r.lost, r.duplicated, faultDur(took))
	if note != "" {
		line += " (" + note + ")"
	}
	t.Log(line)
	if r.unpublished > 0 {
		t.Errorf("%s: %d of %d messages were never published successfully despite retries", scenario, r.unpublished, l.n)
	}
	if r.lost > 0 {
		t.Errorf("%s: %d messages acknowledged by JetStream were never delivered, e.g. indexes %v", scenario, r.lost, r.lostSample)
	}
	return r
}

// faultStats counts what publishers saw.
type faultStats struct {
	mu     sync.Mutex
	errors int
	kinds  map[string]int
	last   string // the first error, as an example
}

// failed counts an error of the in-process component by its Kind.
func (s *faultStats) failed(err error) {
	k := "unavailable"
	switch jetstream.KindOf(err) {
	case jetstream.KindInvalid:
		k = "invalid"
	case jetstream.KindRejected:
		k = "rejected"
	}
	s.failedAs(k, err)
}

// failedAs counts err as of the given kind (a gRPC code, say).
func (s *faultStats) failedAs(kind string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == "" {
		s.last = err.Error()
	}
	s.errors++
	if s.kinds == nil {
		s.kinds = map[string]int{}
	}
	s.kinds[kind]++
}

func (s *faultStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == "" {
		return fmt.Sprintf("publish errors=%d", s.errors)
	}
	return fmt.Sprintf("publish errors=%d %v, e.g. %.160q", s.errors, s.kinds, s.last)
}

func (s *faultStats) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errors
}

// faultPubSub is an initialised in-process component; it is closed when the
// test ends.
func faultPubSub(t *testing.T, name string, props map[string]string) *jetstream.PubSub {
	t.Helper()
	ps := jetstream.New(procLogger(t, name))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ps.Init(ctx, pubsub.Metadata{Base: contribmd.Base{Name: name, Properties: props}}); err != nil {
		t.Fatalf("Init %s: %v", name, err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	return ps
}

// faultProps merges component metadata.
func faultProps(base map[string]string, more ...map[string]string) map[string]string {
	out := make(map[string]string, len(base))
	for k, v := range base {
		out[k] = v
	}
	for _, m := range more {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// faultBulkPublish publishes messages [from, to) as one batch and retries the
// entries that failed, with the same msgId so that JetStream drops what it
// already stored, until every entry succeeded or ctx ends.
func faultBulkPublish(ctx context.Context, ps *jetstream.PubSub, topic string, l *faultLedger, from, to int, stats *faultStats) error {
	entries := make([]pubsub.BulkMessageEntry, 0, to-from)
	for i := from; i < to; i++ {
		entries = append(entries, pubsub.BulkMessageEntry{
			EntryId: strconv.Itoa(i), Event: l.payload(i), ContentType: "text/plain",
			Metadata: map[string]string{jetstream.MetadataMsgID: l.id(i)},
		})
	}
	for attempt := 0; len(entries) > 0; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%d entries still failing: %w", len(entries), ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := ps.BulkPublish(cctx, &pubsub.BulkPublishRequest{Topic: topic, Entries: entries})
		cancel()
		if err == nil {
			for _, e := range entries {
				i, _ := strconv.Atoi(e.EntryId)
				l.markPublished(i)
			}
			return nil
		}
		stats.failed(err)
		failed := make(map[string]bool, len(resp.FailedEntries))
		for _, f := range resp.FailedEntries {
			failed[f.EntryId] = true
		}
		if len(failed) == 0 {
			continue // failed as a whole: all again
		}
		again := entries[:0:0]
		for _, e := range entries {
			if failed[e.EntryId] {
				again = append(again, e)
				continue
			}
			i, _ := strconv.Atoi(e.EntryId)
			l.markPublished(i)
		}
		entries = again
	}
	return nil
}

// faultPublish publishes message i on its own, retrying like faultBulkPublish.
func faultPublish(ctx context.Context, ps *jetstream.PubSub, topic string, l *faultLedger, i int, stats *faultStats) error {
	ct := "text/plain"
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := ps.Publish(cctx, &pubsub.PublishRequest{
			Topic: topic, Data: l.payload(i), ContentType: &ct,
			Metadata: map[string]string{jetstream.MetadataMsgID: l.id(i)},
		})
		cancel()
		if err == nil {
			l.markPublished(i)
			return nil
		}
		stats.failed(err)
	}
}

// faultHandler handles each delivery at once: it records it and returns nil,
// so the component acks it.
func faultHandler(l *faultLedger) pubsub.Handler {
	return func(_ context.Context, m *pubsub.NewMessage) error {
		i := l.index(m.Data)
		if i < 0 {
			return nil
		}
		l.deliver(i)
		l.done(i)
		return nil
	}
}

// faultMessages is how many messages the kill -9 run publishes and consumes;
// FAULT_KILL9_MESSAGES overrides it.
func faultMessages(env string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(env)); err == nil && v > 0 {
		return v
	}
	return def
}

// faultRunPublishers publishes messages [0, total) in batches from several
// goroutines. It returns a channel that yields nil once everything was
// published, or the first error.
func faultRunPublishers(ctx context.Context, ps *jetstream.PubSub, topic string, l *faultLedger, total, publishers, batch int, stats *faultStats) <-chan error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				from := int(next.Add(int64(batch))) - batch
				if from >= total {
					return
				}
				if err := faultBulkPublish(ctx, ps, topic, l, from, min(from+batch, total), stats); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	out := make(chan error, 1)
	go func() {
		wg.Wait()
		close(errs)
		out <- <-errs // nil when no publisher failed
	}()
	return out
}

// TestFaultNATSKilledAndRestarted kills -9 a nats-server with file storage in
// the middle of a publish and consume run, and restarts it on the same port
// and store. Publishers retry what failed with the same msgId; consumers
// resume by themselves; nothing acknowledged by JetStream is lost.
func TestFaultNATSKilledAndRestarted(t *testing.T) {
	total := faultMessages("FAULT_KILL9_MESSAGES", 100_000)
	const topic = "faults.kill9"
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ns := procStartNATS(t, "nats-kill9", "-sd", t.TempDir())
	base := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "kill9"}
	pub := faultPubSub(t, "fault-kill9-pub", base)
	l := newFaultLedger("k9", total)
	subProps := faultProps(base, map[string]string{
		"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s", "maxInFlight": "1000", "maxAckPending": "4000",
	})
	var subs []*jetstream.PubSub
	for i := range 2 {
		sub := faultPubSub(t, fmt.Sprintf("fault-kill9-sub%d", i), subProps)
		subs = append(subs, sub)
		if err := sub.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, faultHandler(l)); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}

	stats := &faultStats{}
	published := faultRunPublishers(ctx, pub, topic, l, total, 4, 500, stats)

	// Kill in the middle of the run, with publishers and consumers busy.
	if !l.waitPublished(ctx, total*3/10) {
		t.Fatalf("only %d of %d messages published before the kill", l.publishedCount(), total)
	}
	killedAt := time.Now()
	ns.Kill()
	handledAtKill := l.handledCount()
	time.Sleep(2 * time.Second) // the outage itself, not a wait for a condition
	procStart(t, ns.Proc)
	ns.waitReady(t, 30*time.Second)
	t.Logf("nats-server killed -9 at %d published / %d handled, back after %s", l.publishedCount(), handledAtKill, faultDur(time.Since(killedAt)))

	select {
	case err := <-published:
		if err != nil {
			t.Errorf("publishers gave up: %v", err)
		}
	case <-ctx.Done():
		t.Errorf("publishers did not finish in time")
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d messages before the deadline", l.handledCount(), total)
	}
	took := time.Since(start)
	stored := faultQuiesce(t, ns.url(), topic, 20*time.Second)

	faultReport(t, "nats-kill9-restart", l, took, fmt.Sprintf("%s; stored=%d; %s", stats, stored, ackedAgain(subs)))
	if stats.count() == 0 {
		t.Errorf("no publish failed while nats-server was down: the kill did not hit the run")
	}
}

// ackedAgain sums, over subs, the redeliveries and those of messages the
// same instance had acknowledged (JetStream lost the ack), which it
// acknowledged again rather than hand to the app twice.
func ackedAgain(subs []*jetstream.PubSub) string {
	var again, redelivered uint64
	for _, sub := range subs {
		for _, st := range sub.Stats().Subscriptions {
			again += st.AckedAgain
			redelivered += st.Redeliveries
		}
	}
	return fmt.Sprintf("redeliveries=%d, acked again without the app=%d", redelivered, again)
}

// faultQuiesce waits (up to within) until every consumer of the stream that
// stores topic has nothing pending and nothing unacknowledged, so that every
// redelivery (of an ack lost in the fault, say) has happened and is counted
// as a duplicate. It returns how many messages the stream stores.
func faultQuiesce(t *testing.T, url, topic string, within time.Duration) uint64 {
	t.Helper()
	_, js := procClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		// Each round asks again, with a short timeout: right after a
		// cluster lost its meta leader, JetStream API requests go
		// unanswered or get 503 until a new one is elected.
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		stored, busy := faultSettled(rctx, js, topic)
		rcancel()
		if busy == "" {
			return stored
		}
		select {
		case <-ctx.Done():
			t.Errorf("not settled within %s: %s", within, busy)
			return 0
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// faultSettled returns how many messages the stream that stores topic
// holds, or why it is not settled yet: a consumer with messages pending or
// unacknowledged, or a failed request.
func faultSettled(ctx context.Context, js natsjs.JetStream, topic string) (uint64, string) {
	name, err := js.StreamNameBySubject(ctx, topic)
	if err != nil {
		return 0, fmt.Sprintf("find the stream of %s: %v", topic, err)
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		return 0, fmt.Sprintf("stream %s: %v", name, err)
	}
	busy := ""
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.NumPending > 0 || ci.NumAckPending > 0 {
			busy = fmt.Sprintf("consumer %s: %d pending, %d unacknowledged", ci.Name, ci.NumPending, ci.NumAckPending)
		}
	}
	if err := lister.Err(); err != nil {
		busy = "listing consumers: " + err.Error()
	}
	if busy != "" {
		return 0, busy
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, fmt.Sprintf("stream %s: %v", name, err)
	}
	return info.State.Msgs, ""
}

// TestFaultNATSDownAtStart initialises the component against a port nobody
// listens on and subscribes at once; NATS comes up 20 s later on that port.
// Init succeeds, publishes fail clearly (and are retried) while NATS is
// down, and the subscription made at start delivers once NATS is there,
// without restarting anything.
func TestFaultNATSDownAtStart(t *testing.T) {
	const (
		topic    = "faults.late"
		total    = 2000
		early    = 20 // published one by one while NATS is still down
		downTime = 20 * time.Second
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port := natstest.FreePortT(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	ps := jetstream.New(procLogger(t, "fault-late"))
	ictx, icancel := context.WithTimeout(ctx, 10*time.Second)
	err := ps.Init(ictx, pubsub.Metadata{Base: contribmd.Base{Name: "fault-late", Properties: map[string]string{
		"natsURL": url, "reconnectWait": "100ms", "consumerID": "late",
	}}})
	icancel()
	initTook := time.Since(start)
	t.Cleanup(func() { _ = ps.Close() })
	if err != nil {
		t.Fatalf("Init with NATS down: %v", err)
	}
	if initTook > 5*time.Second {
		t.Errorf("Init took %s with NATS down; it should not wait for NATS", initTook)
	}
	l := newFaultLedger("late", total)
	if err := ps.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, faultHandler(l)); err != nil {
		t.Fatalf("Subscribe with NATS down: %v", err)
	}
	if err := ps.Ping(ctx); err == nil {
		t.Errorf("Ping succeeded with NATS down")
	}
	ct := "text/plain"
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	err = ps.Publish(pctx, &pubsub.PublishRequest{Topic: topic, Data: []byte("probe"), ContentType: &ct})
	pcancel()
	if err == nil {
		t.Errorf("Publish with NATS down returned nil")
	} else if !jetstream.IsRetriable(err) {
		t.Errorf("Publish with NATS down: %v is not retriable", err)
	} else {
		t.Logf("publish while NATS is down: %v", err)
	}

	// Publishers keep trying while NATS is down.
	stats := &faultStats{}
	var wg sync.WaitGroup
	for i := range early {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := faultPublish(ctx, ps, topic, l, i, stats); err != nil {
				t.Errorf("publish %d: %v", i, err)
			}
		}()
	}

	time.Sleep(time.Until(start.Add(downTime))) // the outage itself, not a wait for a condition
	if n := l.publishedCount(); n > 0 {
		t.Errorf("%d publishes returned nil while NATS was down", n)
	}
	ns := procNewNATS(t, "nats-late", port, "-sd", t.TempDir())
	procStart(t, ns.Proc)
	upAt := time.Now()
	ns.waitReady(t, 30*time.Second)

	published := make(chan error, 1)
	go func() {
		err := faultBulkPublish(ctx, ps, topic, l, early, total, stats)
		published <- err
	}()
	if err := <-published; err != nil {
		t.Errorf("bulk publish after NATS came up: %v", err)
	}
	wg.Wait()
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d messages", l.handledCount(), total)
	}
	first := l.firstDelivery()
	took := time.Since(start)
	if first.IsZero() {
		t.Fatalf("nothing delivered")
	}
	lat := faultDur(first.Sub(upAt))
	faultReport(t, "nats-down-at-start", l, took, fmt.Sprintf("init %s with NATS down; first delivery %s after NATS started; %s", initTook.Truncate(time.Microsecond), lat, stats))
	if stats.count() == 0 {
		t.Errorf("no publish failed while NATS was down")
	}
}

// TestFaultLongOutageMemoryStorage keeps NATS away for longer than 60
// reconnect attempts and brings it back without the memory streams and
// consumers: the component reconnects by itself, creates the stream and the
// consumer again, and delivers what is published after the recovery.
func TestFaultLongOutageMemoryStorage(t *testing.T) {
	const (
		topic  = "faults.outage"
		before = 500
		during = 50
		after  = 1000
		total  = before + during + after
		outage = 12 * time.Second
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := procStartNATS(t, "nats-outage", "-sd", t.TempDir())
	base := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "outage", "streamStorage": "memory"}
	pub := faultPubSub(t, "fault-outage-pub", base)
	sub := faultPubSub(t, "fault-outage-sub", faultProps(base, map[string]string{"heartbeat": "1s"}))
	l := newFaultLedger("outage", total)
	if err := sub.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, faultHandler(l)); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	stats := &faultStats{}
	if err := faultBulkPublish(ctx, pub, topic, l, 0, before, stats); err != nil {
		t.Fatalf("publish before the outage: %v", err)
	}
	// Memory storage loses what was not consumed; the outage must only cost
	// what the server itself forgets, so drain first.
	if !l.waitHandled(ctx, before) {
		t.Fatalf("handled %d of %d before the outage", l.handledCount(), before)
	}

	ns.Kill()
	downAt := time.Now()
	// Count the component's reconnect attempts: something accepts on the
	// port and hangs up at once, as good as nobody listening to a client.
	dials := faultCountDials(t, ns.port)
	var wg sync.WaitGroup
	for i := before; i < before+during; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := faultPublish(ctx, pub, topic, l, i, stats); err != nil {
				t.Errorf("publish %d: %v", i, err)
			}
		}()
	}
	time.Sleep(outage)
	if n := l.publishedCount(); n > before {
		t.Errorf("%d publishes returned nil while NATS was down", n-before)
	}
	// Two connections (publisher and subscriber) were reconnecting.
	attempts := dials() / 2
	procStart(t, ns.Proc)
	upAt := time.Now()
	ns.waitReady(t, 30*time.Second)
	t.Logf("outage of %s, %d reconnect attempts per connection at reconnectWait 100ms", faultDur(upAt.Sub(downAt)), attempts)

	if err := faultBulkPublish(ctx, pub, topic, l, before+during, total, stats); err != nil {
		t.Errorf("publish after the outage: %v", err)
	}
	wg.Wait()
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d", l.handledCount(), total)
	}
	recovered := time.Since(upAt)
	took := time.Since(start)

	// The server came back without the stream and the consumer: the ones
	// there now were created after the restart.
	_, js := procClient(t, ns.url())
	ictx, icancel := context.WithTimeout(ctx, 10*time.Second)
	defer icancel()
	if name, err := js.StreamNameBySubject(ictx, topic); err != nil {
		t.Errorf("stream for %s: %v", topic, err)
	} else if st, err := js.Stream(ictx, name); err != nil {
		t.Errorf("stream %s: %v", name, err)
	} else {
		if created := st.CachedInfo().Created; created.Before(upAt.Add(-time.Second)) {
			t.Errorf("stream %s was created at %s, before the restart at %s: the server did not lose it", name, created, upAt)
		}
		lister := st.ListConsumers(ictx)
		n := 0
		for ci := range lister.Info() {
			n++
			if ci.Created.Before(upAt.Add(-time.Second)) {
				t.Errorf("consumer %s predates the restart", ci.Name)
			}
		}
		if n == 0 {
			t.Errorf("no consumer on stream %s after the recovery", name)
		}
	}
	faultReport(t, "long-outage-memory", l, took, fmt.Sprintf("outage %s (%d reconnect attempts); all delivered %s after NATS returned; %s",
		faultDur(upAt.Sub(downAt)), attempts, faultDur(recovered), stats))
	if stats.count() == 0 {
		t.Errorf("no publish failed during the outage")
	}
	if attempts <= 60 {
		t.Errorf("the outage covered only %d reconnect attempts", attempts)
	}
}

// TestFaultSlowHandler runs handlers that take 3 s with an ackWait of 1 s:
// the component keeps every message it holds alive, so none is delivered a
// second time while it is being handled (or waits for its turn).
func TestFaultSlowHandler(t *testing.T) {
	ns := procStartNATS(t, "nats-slow", "-sd", t.TempDir())
	for _, tc := range []struct {
		name, concurrency string
		n                 int
	}{
		{"parallel", "parallel", 6},
		{"single", "single", 3}, // the last one waits 6 s in the component's queue
	} {
		t.Run(tc.name, func(t *testing.T) {
			const handle = 3 * time.Second
			topic := "faults.slow." + tc.name
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ps := faultPubSub(t, "fault-slow-"+tc.name, map[string]string{
				"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "slow",
				"ackWait": "1s", "concurrency": tc.concurrency, "maxInFlight": "10",
			})
			l := newFaultLedger("slow-"+tc.name, tc.n)
			err := ps.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, func(hctx context.Context, m *pubsub.NewMessage) error {
				i := l.index(m.Data)
				if i < 0 {
					return nil
				}
				if !l.deliver(i) {
					t.Logf("message %d delivered again (deliveries %s) while it is handled or after", i, m.Metadata[jetstream.MetadataDeliveries])
					return nil
				}
				select {
				case <-time.After(handle):
				case <-hctx.Done():
					l.release(i)
					return hctx.Err()
				}
				l.done(i)
				return nil
			})
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			stats := &faultStats{}
			if err := faultBulkPublish(ctx, ps, topic, l, 0, tc.n, stats); err != nil {
				t.Fatalf("publish: %v", err)
			}
			within := handle*time.Duration(tc.n) + 20*time.Second
			wctx, wcancel := context.WithTimeout(ctx, within)
			if !l.waitHandled(wctx, tc.n) {
				t.Errorf("handled %d of %d within %s", l.handledCount(), tc.n, within)
			}
			wcancel()
			took := time.Since(start)
			time.Sleep(3 * time.Second) // three ack waits: a redelivery would show
			r := faultReport(t, "slow-handler-"+tc.name, l, took, "ackWait 1s, handler 3s")
			if r.duplicated > 0 {
				t.Errorf("%d duplicate deliveries while handlers were still working", r.duplicated)
			}
		})
	}
}

// faultCountDials listens on port, hangs up on every connection and counts
// them, until the returned function is called; it returns the count.
func faultCountDials(t *testing.T, port int) func() int {
	t.Helper()
	var ln net.Listener
	// The killed server's socket may linger a moment.
	err := natstest.Await(time.Second, 20*time.Millisecond, nil, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listen on %d during the outage: %v", port, err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_ = c.Close()
		}
	}()
	var once sync.Once
	stop := func() int {
		once.Do(func() { _ = ln.Close(); <-done })
		return int(n.Load())
	}
	t.Cleanup(func() { stop() })
	return stop
}

// faultSocketDir is a short temporary folder for Unix sockets (whose paths
// are limited to about 100 bytes, too little for t.TempDir under long test
// names).
func faultSocketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fsock")
	if err != nil {
		t.Fatalf("socket dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// faultGRPC is daprd's side of the socket: the generated PubSub client, on a
// connection that redials quickly after the component restarts.
func faultGRPC(t *testing.T, socket string) proto.PubSubClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		}))
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return proto.NewPubSubClient(conn)
}

// faultInstance names the Component a gRPC call is for, as daprd does.
func faultInstance(ctx context.Context, name string) context.Context {
	return grpcmd.AppendToOutgoingContext(ctx, pluggable.InstanceHeader, name)
}

func faultGRPCInit(ctx context.Context, c proto.PubSubClient, instance string, props map[string]string) error {
	ictx, cancel := context.WithTimeout(faultInstance(ctx, instance), 10*time.Second)
	defer cancel()
	_, err := c.Init(ictx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props}})
	return err
}

// faultGRPCPublish publishes message i through the socket, retrying with the
// same msgId until it succeeds or ctx ends.
func faultGRPCPublish(ctx context.Context, c proto.PubSubClient, instance, topic string, l *faultLedger, i int, stats *faultStats) error {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		cctx, cancel := context.WithTimeout(faultInstance(ctx, instance), 3*time.Second)
		_, err := c.Publish(cctx, &proto.PublishRequest{
			Topic: topic, Data: l.payload(i), ContentType: "text/plain",
			Metadata: map[string]string{jetstream.MetadataMsgID: l.id(i)},
		})
		cancel()
		if err == nil {
			l.markPublished(i)
			return nil
		}
		stats.failedAs(status.Code(err).String(), err)
	}
}

// faultPull is one PullMessages stream, as daprd runs it for a subscription.
// It acks what its shouldAck function allows and holds the rest unacked.
type faultPull struct {
	l      *faultLedger
	stream proto.PubSub_PullMessagesClient
	cancel context.CancelFunc
	ended  chan struct{}

	mu   sync.Mutex
	held map[string]int // message id -> index, received and not acked
}

// faultStartPull opens PullMessages for topic on instance. shouldAck decides,
// per received message, whether to ack it now or hold it unacknowledged.
func faultStartPull(t *testing.T, ctx context.Context, c proto.PubSubClient, instance, topic string, md map[string]string, l *faultLedger, shouldAck func() bool) *faultPull {
	t.Helper()
	sctx, cancel := context.WithCancel(faultInstance(ctx, instance))
	stream, err := c.PullMessages(sctx)
	if err != nil {
		cancel()
		t.Fatalf("PullMessages: %v", err)
	}
	if err := stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: topic, Metadata: md}}); err != nil {
		cancel()
		t.Fatalf("PullMessages topic frame: %v", err)
	}
	p := &faultPull{l: l, stream: stream, cancel: cancel, ended: make(chan struct{}), held: map[string]int{}}
	go func() {
		defer close(p.ended)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			i := l.index(m.GetData())
			if i < 0 {
				continue
			}
			if !l.deliver(i) {
				// A duplicate: ack it, it was counted.
				_ = stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()})
				continue
			}
			if shouldAck() {
				if stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}) == nil {
					l.done(i)
				} else {
					l.release(i)
				}
				continue
			}
			p.mu.Lock()
			p.held[m.GetId()] = i
			p.mu.Unlock()
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *faultPull) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

// stop cuts the stream and gives what it held back to the ledger: the
// component must redeliver it.
func (p *faultPull) stop() {
	p.cancel()
	<-p.ended
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, i := range p.held {
		p.l.release(i)
		delete(p.held, id)
	}
}

// faultAckFirst acks the first n messages and holds the rest.
func faultAckFirst(n int) func() bool {
	var seen atomic.Int64
	return func() bool { return seen.Add(1) <= int64(n) }
}

// TestFaultSIGTERMComponent sends SIGTERM to the component process while a
// publisher is publishing through it and daprd holds unacknowledged
// messages: it exits 0 within the drain bound, and after a restart every
// unacknowledged message is redelivered at once; publishes that failed
// during the restart are retried with the same msgId.
func TestFaultSIGTERMComponent(t *testing.T) {
	const (
		topic    = "faults.sigterm"
		total    = 600
		acked    = 100
		holdMin  = 40
		drain    = 2 * time.Second
		instance = "pubsub"
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := procStartNATS(t, "nats-sigterm", "-sd", t.TempDir())
	comp := procNewComponent(t, faultSocketDir(t), "faults-sigterm", "-drain-timeout", drain.String())
	comp.startServing(t, 30*time.Second)
	c := faultGRPC(t, comp.socket)
	props := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "sigterm"}
	if err := faultGRPCInit(ctx, c, instance, props); err != nil {
		t.Fatalf("Init: %v", err)
	}
	l := newFaultLedger("sigterm", total)
	subMD := map[string]string{"maxInFlight": "50"}
	p1 := faultStartPull(t, ctx, c, instance, topic, subMD, l, faultAckFirst(acked))
	faultWaitConsumer(t, ns.url(), "sigterm", topic)

	stats := &faultStats{}
	published := make(chan error, 1)
	go func() {
		for i := range total {
			if err := faultGRPCPublish(ctx, c, instance, topic, l, i, stats); err != nil {
				published <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			time.Sleep(10 * time.Millisecond) // still publishing across the restart
		}
		published <- nil
	}()

	_ = natstest.Await(30*time.Second, 20*time.Millisecond, nil, natstest.Check(func() bool { return p1.heldCount() >= holdMin }))
	held := p1.heldCount()
	if held < holdMin {
		t.Fatalf("daprd holds only %d unacknowledged messages", held)
	}
	sigAt := time.Now()
	if err := comp.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	exited, err := comp.Wait(drain + 8*time.Second)
	exitTook := time.Since(sigAt)
	if !exited {
		t.Fatalf("the component did not exit within %s of SIGTERM", drain+8*time.Second)
	}
	if err != nil {
		t.Errorf("the component exited with %v after SIGTERM, want status 0", err)
	}
	if exitTook > drain+5*time.Second {
		t.Errorf("exit took %s, more than the drain bound %s plus 5s", exitTook, drain)
	}
	if _, err := os.Stat(comp.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after exit: %v", err)
	}
	select {
	case <-p1.ended:
	case <-time.After(5 * time.Second):
		t.Errorf("daprd's stream did not end with the process")
	}
	p1.stop()
	handledBefore := l.handledCount()

	comp.startServing(t, 30*time.Second)
	restartedAt := time.Now()
	if err := faultGRPCInit(ctx, c, instance, props); err != nil {
		t.Fatalf("Init after restart: %v", err)
	}
	faultStartPull(t, ctx, c, instance, topic, subMD, l, func() bool { return true })
	// The held messages were given back at shutdown, so they come at once,
	// not after the 30 s ack wait.
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	if !l.waitHandled(rctx, handledBefore+held) {
		t.Errorf("after the restart only %d of the %d held messages came back within 10s", l.handledCount()-handledBefore, held)
	}
	rcancel()
	redelivered := time.Since(restartedAt)
	if err := <-published; err != nil {
		t.Errorf("publisher: %v", err)
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d", l.handledCount(), total)
	}
	took := time.Since(start)
	time.Sleep(time.Second) // a window for a late duplicate to show in the report, not a wait
	faultReport(t, "component-sigterm", l, took, fmt.Sprintf("exit 0 after %s with %d held; held ones back within %s of restart; %s",
		faultDur(exitTook), held, faultDur(redelivered), stats))
	if stats.count() == 0 {
		t.Errorf("no publish failed across the restart: the publisher finished before SIGTERM")
	}
}

// TestFaultPullStreamCut cuts daprd's PullMessages stream while it holds
// unacknowledged messages: they go to another subscriber on the same
// durable at once, well under the ack wait.
func TestFaultPullStreamCut(t *testing.T) {
	const (
		topic   = "faults.cut"
		total   = 200
		acked   = 10
		holdMin = 40
		ackWait = 30 * time.Second
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := procStartNATS(t, "nats-cut", "-sd", t.TempDir())

	rctx, stop := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	served := make(chan error, 1)
	go func() {
		served <- pluggable.Run(rctx, pluggable.Options{
			SocketFolder: faultSocketDir(t), SocketName: "faults-cut", DrainTimeout: 2 * time.Second,
			Logger: procLogger(t, "fault-cut-server"), Ready: func(p string) { ready <- p },
		})
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Errorf("the gRPC server did not stop")
		}
	})
	var socket string
	select {
	case socket = <-ready:
	case err := <-served:
		t.Fatalf("serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("the gRPC server did not start")
	}
	c := faultGRPC(t, socket)
	props := map[string]string{"natsURL": ns.url(), "reconnectWait": "100ms", "consumerID": "cut", "ackWait": ackWait.String()}
	for _, inst := range []string{"daprd-a", "daprd-b"} {
		if err := faultGRPCInit(ctx, c, inst, props); err != nil {
			t.Fatalf("Init %s: %v", inst, err)
		}
	}
	l := newFaultLedger("cut", total)
	subMD := map[string]string{"maxInFlight": "50"}
	a := faultStartPull(t, ctx, c, "daprd-a", topic, subMD, l, faultAckFirst(acked))
	faultWaitConsumer(t, ns.url(), "cut", topic)

	stats := &faultStats{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += 4 {
				if err := faultGRPCPublish(ctx, c, "daprd-a", topic, l, i, stats); err != nil {
					t.Errorf("publish %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	_ = natstest.Await(20*time.Second, 20*time.Millisecond, nil, natstest.Check(func() bool { return a.heldCount() >= holdMin }))
	held := a.heldCount()
	if held < holdMin {
		t.Fatalf("daprd-a holds only %d messages", held)
	}
	handledBefore := l.handledCount()
	cutAt := time.Now()
	a.stop() // cancels the client context: the stream is cut mid-flight

	faultStartPull(t, ctx, c, "daprd-b", topic, subMD, l, func() bool { return true })
	wctx, wcancel := context.WithTimeout(ctx, ackWait/3)
	if !l.waitHandled(wctx, handledBefore+held) {
		t.Errorf("only %d of the %d messages held by the cut stream reached the other subscriber within %s", l.handledCount()-handledBefore, held, ackWait/3)
	}
	wcancel()
	back := time.Since(cutAt)
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d", l.handledCount(), total)
	}
	took := time.Since(start)
	time.Sleep(time.Second) // a window for a late duplicate to show in the report, not a wait
	faultReport(t, "pull-stream-cut", l, took, fmt.Sprintf("%d held messages at another subscriber %s after the cut (ackWait %s)", held, faultDur(back), ackWait))
}
