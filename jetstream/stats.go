package jetstream

import (
	"context"
	"errors"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Stats is a snapshot of what an instance does behind the socket, for
// metrics and readiness. Counters count from the instance's Init, or from
// the Init of the first instance it continues (see ContinueCounts).
type Stats struct {
	Connection    ConnectionStats
	Publish       []PublishStats
	Subscriptions []SubscriptionStats
	GivenBack     []GivenBackStats
}

// ConnectionStats describes the connection to NATS.
type ConnectionStats struct {
	// State is connected, reconnecting or closed ("" before Init).
	State         string
	ServerVersion string
	// Reconnects counts connections made again after one was lost; the
	// first connection is not one, even when NATS was not reachable yet.
	Reconnects uint64
	// Disconnects counts lost connections by the kind of error.
	Disconnects map[string]uint64
	// Problem says why no JetStream answer can arrive on a connection that
	// is up (NATS refuses nats.go's reply subscription), or is "".
	Problem string
}

// Publish outcomes.
const (
	OutcomeOK        = "ok"
	OutcomeDuplicate = "duplicate"
	OutcomeNoStream  = "no_stream"
	OutcomeTimeout   = "timeout"
	OutcomeMismatch  = "expected_mismatch"
	OutcomeInvalid   = "invalid"
	// OutcomeFull is a refusal by a stream that discards new messages and
	// reached a limit.
	OutcomeFull  = "stream_full"
	OutcomeError = "error"
)

var outcomes = []string{OutcomeOK, OutcomeDuplicate, OutcomeNoStream, OutcomeTimeout, OutcomeMismatch, OutcomeInvalid, OutcomeFull, OutcomeError}

// MaxPublishTopics is how many topics an instance counts publishes for
// one by one. An app may publish to a topic per entity (orders.<id>), and
// a series per topic, kept for the life of the instance, would grow with
// every new one in the component's memory and in every scrape. Publishes
// to topics beyond the first MaxPublishTopics count under OtherTopics.
const MaxPublishTopics = 100

// OtherTopics stands for the topics beyond MaxPublishTopics in
// PublishStats and their series. It has a space, which no NATS subject
// has, so no topic can be taken for it.
const OtherTopics = "other topics"

// PublishStats counts the publishes to one topic by outcome.
type PublishStats struct {
	Topic             string
	Outcomes          map[string]uint64
	BulkEntriesFailed uint64
}

// SubscriptionStats describes the subscriptions to one topic with one
// consumer: counters that outlive a single PullMessages stream, what the
// live ones hold now, and what ended ones left waiting for the next.
type SubscriptionStats struct {
	Topic    string
	Consumer string // the durable, or "ephemeral"
	Live     int    // subscriptions open now

	Deliveries, Redeliveries, Acks, Naks, Terms, InProgress uint64
	// AckedAgain counts redeliveries of messages this instance had
	// already acknowledged for the app: JetStream lost the ack (the
	// network broke before the client noticed, or a server restarted
	// without it), and the component acknowledged them again instead of
	// handing them to the app twice.
	AckedAgain uint64

	// Held counts the messages delivered to daprd and not yet settled,
	// and those an ended subscription left waiting for the next one of
	// the consumer; OldestHeld is the age of the oldest of them.
	Held        int
	MaxInFlight int
	OldestHeld  time.Duration
	// NumPending and NumAckPending are the consumer's, from the last info
	// a live subscription read (at most every second while messages are
	// held). ConsumerKnown is false when no live subscription has read
	// one: then they say nothing.
	NumPending    uint64
	NumAckPending int
	ConsumerKnown bool
	// Problem is what keeps a subscription from delivering, since
	// ProblemSince; Permanent when retrying cannot fix it. Stuck is set
	// when Ping fails with it: at once when Permanent, else once it has
	// lasted 10 s. The readiness probe follows Stuck too.
	Problem      string
	ProblemSince time.Time
	Permanent    bool
	Stuck        bool
}

// Reasons a message the app has not seen is given back to JetStream.
const (
	GivenBackPause     = "pause"
	GivenBackStreamEnd = "stream_end"
	GivenBackShutdown  = "shutdown"
)

// GivenBackStats counts messages given back, by reason.
type GivenBackStats struct {
	Topic  string
	Reason string
	Count  uint64
}

// PublishObserver is told how long each publish waited for its PubAck.
// It runs on the publish path: it must be fast and must not block.
type PublishObserver func(topic string, took time.Duration, outcome string)

// SetPublishObserver sets o for the publishes that follow.
func (p *PubSub) SetPublishObserver(o PublishObserver) { p.observer.Store(&o) }

// subCounters count for one topic and consumer, across subscriptions.
type subCounters struct {
	deliveries, redeliveries, acks, naks, terms, inProgress, ackedAgain atomic.Uint64
}

type subKey struct{ topic, consumer string }

type givenBackKey struct{ topic, reason string }

// pubCounters count the publishes to one topic, or to OtherTopics.
type pubCounters struct {
	topic      string
	byOutcome  [8]atomic.Uint64 // in the order of outcomes
	bulkFailed atomic.Uint64
}

// stats holds an instance's counters.
type stats struct {
	pub        sync.Map // topic -> *pubCounters
	topics     atomic.Pointer[publishTopics]
	reconnects atomic.Uint64
	// before holds the counters of the instance this one continues (see
	// ContinueCounts), which Stats adds to these.
	before atomic.Pointer[stats]

	mu          sync.Mutex
	subs        map[subKey]*subCounters
	givenBack   map[givenBackKey]uint64
	disconnects map[string]uint64
}

func newStats() *stats {
	st := &stats{subs: map[subKey]*subCounters{}, givenBack: map[givenBackKey]uint64{}, disconnects: map[string]uint64{}}
	st.topics.Store(&publishTopics{known: map[string]bool{}})
	return st
}

// publishTopics are the topics counted one by one, at most
// MaxPublishTopics of them (see there). An instance shares them with those
// it continues, so that their series together stay within the bound, and a
// topic keeps its own series across them.
type publishTopics struct {
	mu    sync.Mutex
	known map[string]bool
}

// admit reports whether topic is counted one by one, and makes it so while
// there is room.
func (pt *publishTopics) admit(topic string) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.known[topic] {
		return true
	}
	if len(pt.known) >= MaxPublishTopics {
		return false
	}
	pt.known[topic] = true
	return true
}

// absorb admits other's topics beyond the bound: they have series already.
func (pt *publishTopics) absorb(other *publishTopics) {
	if pt == other {
		return
	}
	other.mu.Lock()
	defer other.mu.Unlock()
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for t := range other.known {
		pt.known[t] = true
	}
}

// publishes returns the counters of topic, or those of OtherTopics.
func (st *stats) publishes(topic string) *pubCounters {
	if c, ok := st.pub.Load(topic); ok {
		return c.(*pubCounters)
	}
	if !st.topics.Load().admit(topic) {
		topic = OtherTopics
	}
	c, _ := st.pub.LoadOrStore(topic, &pubCounters{topic: topic})
	return c.(*pubCounters)
}

// published counts a publish to topic by its outcome, and returns the
// topic it was counted for: topic, or OtherTopics.
func (st *stats) published(topic, outcome string) string {
	c := st.publishes(topic)
	for i, o := range outcomes {
		if o == outcome {
			c.byOutcome[i].Add(1)
			break
		}
	}
	return c.topic
}

func (st *stats) subscription(topic, consumer string) *subCounters {
	st.mu.Lock()
	defer st.mu.Unlock()
	k := subKey{topic, consumer}
	c := st.subs[k]
	if c == nil {
		c = &subCounters{}
		st.subs[k] = c
	}
	return c
}

func (st *stats) gaveBack(topic, reason string, n int) {
	if n == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.givenBack[givenBackKey{topic, reason}] += uint64(n)
}

func (st *stats) disconnected(kind string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.disconnects[kind]++
}

// continues reports whether st counts on from other, or is other.
func (st *stats) continues(other *stats) bool {
	for c := st; c != nil; c = c.before.Load() {
		if c == other {
			return true
		}
	}
	return false
}

// ContinueCounts has p's counters go on from old's: p replaces old (the same
// Component initialised again), and the series they feed keep their labels,
// so none of them may go back within one process. Counters old still adds as
// it closes count too, and so do the messages its ended subscriptions left
// waiting for the next subscription of their consumer. p continues one
// instance at most; later calls do nothing. p keeps old's counters, not old
// itself, for as long as p lives.
func (p *PubSub) ContinueCounts(old *PubSub) {
	if old == nil || old.stats.continues(p.stats) {
		return
	}
	if p.stats.before.CompareAndSwap(nil, old.stats) {
		shared := old.stats.topics.Load()
		shared.absorb(p.stats.topics.Swap(shared))
	}
}

// statsSum sums the counters of an instance and of those it continues.
type statsSum struct {
	reconnects  uint64
	disconnects map[string]uint64
	givenBack   map[givenBackKey]uint64
	subs        map[subKey]*SubscriptionStats
	pub         map[string]*PublishStats
}

func newStatsSum() *statsSum {
	return &statsSum{disconnects: map[string]uint64{}, givenBack: map[givenBackKey]uint64{}, subs: map[subKey]*SubscriptionStats{}, pub: map[string]*PublishStats{}}
}

func (t *statsSum) subscription(k subKey) *SubscriptionStats {
	v := t.subs[k]
	if v == nil {
		v = &SubscriptionStats{Topic: k.topic, Consumer: k.consumer}
		t.subs[k] = v
	}
	return v
}

func (t *statsSum) publish(topic string) *PublishStats {
	v := t.pub[topic]
	if v == nil {
		v = &PublishStats{Topic: topic, Outcomes: make(map[string]uint64, len(outcomes))}
		for _, o := range outcomes {
			v.Outcomes[o] = 0
		}
		t.pub[topic] = v
	}
	return v
}

// addTo adds st's counters, without those of the instances it continues.
func (st *stats) addTo(t *statsSum) {
	t.reconnects += st.reconnects.Load()
	st.mu.Lock()
	for k, v := range st.disconnects {
		t.disconnects[k] += v
	}
	for k, v := range st.givenBack {
		t.givenBack[k] += v
	}
	for k, c := range st.subs {
		v := t.subscription(k)
		v.Deliveries += c.deliveries.Load()
		v.Redeliveries += c.redeliveries.Load()
		v.Acks += c.acks.Load()
		v.Naks += c.naks.Load()
		v.Terms += c.terms.Load()
		v.InProgress += c.inProgress.Load()
		v.AckedAgain += c.ackedAgain.Load()
	}
	st.mu.Unlock()
	st.pub.Range(func(k, v any) bool {
		c := v.(*pubCounters)
		ps := t.publish(k.(string))
		ps.BulkEntriesFailed += c.bulkFailed.Load()
		for i, o := range outcomes {
			ps.Outcomes[o] += c.byOutcome[i].Load()
		}
		return true
	})
}

// Stats returns what the instance does now. It is cheap enough for every
// scrape: it reads counters and the state of live subscriptions.
func (p *PubSub) Stats() Stats {
	p.mu.Lock()
	nc, api := p.nc, p.api
	subs := p.subscriptionsLocked()
	p.mu.Unlock()
	t := newStatsSum()
	for st := p.stats; st != nil; st = st.before.Load() {
		st.addTo(t)
	}
	now := time.Now()
	for _, s := range subs {
		s.addLive(t, now)
	}
	p.desk.addWaiting(t, p.stats, now)

	out := Stats{Connection: connectionStats(nc)}
	out.Connection.Reconnects = t.reconnects
	out.Connection.Disconnects = t.disconnects
	if err := errors.Join(p.replies.problem(), api.problem()); err != nil {
		out.Connection.Problem = err.Error()
	}
	for k, v := range t.givenBack {
		out.GivenBack = append(out.GivenBack, GivenBackStats{Topic: k.topic, Reason: k.reason, Count: v})
	}
	for _, v := range t.subs {
		out.Subscriptions = append(out.Subscriptions, *v)
	}
	for _, v := range t.pub {
		out.Publish = append(out.Publish, *v)
	}
	sort.Slice(out.GivenBack, func(i, j int) bool {
		a, b := out.GivenBack[i], out.GivenBack[j]
		return a.Topic < b.Topic || (a.Topic == b.Topic && a.Reason < b.Reason)
	})
	sort.Slice(out.Publish, func(i, j int) bool { return out.Publish[i].Topic < out.Publish[j].Topic })
	sort.Slice(out.Subscriptions, func(i, j int) bool {
		a, b := out.Subscriptions[i], out.Subscriptions[j]
		return a.Topic < b.Topic || (a.Topic == b.Topic && a.Consumer < b.Consumer)
	})
	return out
}

// addWaiting adds to t the messages waiting for the next subscription of
// their consumer that subscriptions counted by mine, or by the instances it
// continues, left when they ended: daprd has not settled them, and the
// consumer still has them ack-pending.
func (h *handoverDesk) addWaiting(t *statsSum, mine *stats, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ws := range h.waiting {
		for _, w := range ws {
			if w.d.leftBy == nil || !mine.continues(w.d.leftBy) {
				continue
			}
			v := t.subscription(subKey{w.d.Topic, w.statsConsumer})
			v.Held++
			if age := now.Sub(w.d.received); age > v.OldestHeld {
				v.OldestHeld = age
			}
		}
	}
}

func connectionStats(nc *nats.Conn) ConnectionStats {
	if nc == nil {
		return ConnectionStats{}
	}
	cs := ConnectionStats{ServerVersion: nc.ConnectedServerVersion()}
	switch nc.Status() {
	case nats.CONNECTED:
		cs.State = "connected"
	case nats.CLOSED:
		cs.State = "closed"
	default:
		cs.State = "reconnecting"
	}
	return cs
}

// statsConsumer is the consumer label of s: its durable, or "ephemeral",
// so that re-created ephemeral consumers do not add label values.
func (s *subscription) statsConsumer() string {
	if d := s.durableName(); d != "" {
		return d
	}
	return "ephemeral"
}

// addLive adds what s holds now to its entry in t.
func (s *subscription) addLive(t *statsSum, now time.Time) {
	v := t.subscription(subKey{s.topic, s.statsConsumer()})
	s.mu.Lock()
	defer s.mu.Unlock()
	v.Live++
	v.Held += len(s.held)
	v.MaxInFlight += s.consumerCfg.MaxInFlight
	for d := range s.held {
		if age := now.Sub(d.received); age > v.OldestHeld {
			v.OldestHeld = age
		}
	}
	if cs := s.consumer; cs != nil && !cs.unread {
		v.NumPending, v.NumAckPending, v.ConsumerKnown = cs.numPending, cs.numAckPending, true
	}
	for _, pr := range s.problemsLocked() {
		if pr.err != "" && (v.Problem == "" || (pr.stuck(now) && !v.Stuck)) {
			v.Problem, v.ProblemSince, v.Permanent, v.Stuck = pr.err, pr.since, pr.permanent, pr.stuck(now)
		}
	}
}

// countPublish counts one publish by its outcome, and tells the observer
// how long it waited for its PubAck when it was sent (sent not zero).
func (p *PubSub) countPublish(topic string, sent time.Time, ack *natsjs.PubAck, err error) {
	outcome := publishOutcome(ack, err)
	label := p.stats.published(topic, outcome)
	if o := p.observer.Load(); o != nil && *o != nil && !sent.IsZero() {
		(*o)(label, time.Since(sent), outcome)
	}
}

// publishOutcome names the outcome of a publish.
func publishOutcome(ack *natsjs.PubAck, err error) string {
	switch {
	case err == nil && ack != nil && ack.Duplicate:
		return OutcomeDuplicate
	case err == nil:
		return OutcomeOK
	}
	var apiErr *natsjs.APIError // after a success: it escapes, so it allocates
	switch {
	case isNoStream(err), errors.Is(err, ErrNoStream):
		return OutcomeNoStream
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return OutcomeTimeout
	case errors.As(err, &apiErr) && isExpectationCode(apiErr.ErrorCode):
		return OutcomeMismatch
	case KindOf(err) == KindInvalid:
		return OutcomeInvalid
	case fullLimit(err) != "":
		return OutcomeFull
	}
	return OutcomeError
}

// disconnectKind names the kind of error that lost a connection, for a
// bounded metric label.
func disconnectKind(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, nats.ErrStaleConnection):
		return "stale"
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return "auth"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	}
	return "other"
}
