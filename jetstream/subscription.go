package jetstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// retryMin and retryMax bound the back-off between attempts to set up a
	// consumer or to pull after an error. retryMax is short so that delivery
	// resumes soon after JetStream recovers, whatever the outage lasted.
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
	// retrySlow bounds the back-off of setting up the consumer once the
	// problem has lasted stuckAfter: what has not fixed itself by then (no
	// stream covers the topic, a permission, a limit) waits for an
	// operator, and each attempt costs JetStream API requests, most of them
	// answered by the meta leader. An app with many such topics must not
	// keep asking every retryMax. NATS coming back still starts over at
	// once (reconnected).
	retrySlow = 8 * time.Second
	// startSkew back-dates the start of a new consumer that starts at the
	// subscription request, allowing for clocks of the component and the
	// NATS server that differ a little, and for a publish that overtakes the
	// subscription on its way in. A message published just before the
	// subscription may be delivered; none published after it is missed.
	startSkew = time.Second
	// handlerGrace is how long stopping waits for running in-process
	// handlers before their messages are handed over.
	handlerGrace = 10 * time.Second
	// withdrawGrace bounds how long Pause and stop wait for the inbox to
	// drain: a handler that does not return keeps it from draining.
	withdrawGrace = 5 * time.Second
	// tickEvery paces the subscription's housekeeping: keep-alives,
	// heartbeat checks, retries and consumer refreshes.
	tickEvery = 250 * time.Millisecond
	// reportEvery bounds how often a problem that persists is logged again.
	reportEvery = time.Minute
	// stuckAfter is how long a problem must persist before Ping reports the
	// subscription as failing.
	stuckAfter = 10 * time.Second
)

// DeliverFunc receives the messages of a subscription one at a time, in the
// order JetStream delivered them. It must settle each Delivery eventually,
// from any goroutine. An error means the message was not handed on: it stays
// held and the subscription delivers nothing more until it ends.
type DeliverFunc func(*Delivery) error

// subscription pulls one topic with one long-lived pull on one inbox. It
// holds at most MaxInFlight messages (received and not yet settled) plus
// those requested from JetStream and not yet received, so nothing arrives
// that it has no room for. The inbox's goroutine tracks each message as it
// arrives; a dispatcher hands them to the DeliverFunc in order; a
// keep-alive goroutine sends InProgress; a housekeeping goroutine sets up the
// consumer, watches the pull and retries. NATS trouble never ends a
// subscription.
type subscription struct {
	p           *PubSub
	topic       string
	consumerCfg metadata.Consumer
	requested   time.Time
	// movedSince is, for a topic an operator moved to another stream, the
	// last time the old stream was seen holding it: the consumer on the
	// new stream starts there, whatever the deliver policy, so that what
	// was published after the move is not skipped. Zero otherwise.
	movedSince time.Time
	fn         DeliverFunc
	limiter    *rate.Limiter
	// idleEvery is refreshIdle when the subscription was made.
	idleEvery time.Duration

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // wakes the housekeeping goroutine
	ended  chan struct{} // closed when finish has handed everything on
	ready  chan struct{} // wakes the dispatcher
	work   sync.WaitGroup

	mu          sync.Mutex
	consumer    *consumerState // nil until set up, and after it is gone
	inbox       *nats.Subscription
	drained     chan struct{} // closed when inbox has drained
	outstanding int           // requested from JetStream, not yet received
	requestEnds time.Time     // when the last request must have ended
	requestedAt time.Time     // when the last request was sent
	inboxSince  time.Time     // when the inbox was subscribed to
	// ackPendingLimit is a max_ack_pending limit lower than the default
	// that JetStream refused a consumer for, or 0 (see
	// learnAckPendingLimit).
	ackPendingLimit int
	// keptWarned is set once the log said why messages stay held past
	// handoverTimeout while paused.
	keptWarned bool
	// driftNoted is how the consumer's settings differed from this
	// subscription's when the log last said so.
	driftNoted string
	// deadLetters counts dead letters on their way: the end of the
	// subscription waits for them, since JetStream will not deliver their
	// messages again.
	deadLetters pending
	quiet       chan struct{} // closed when outstanding drops to 0
	lastHeard   time.Time     // from the pull: a message, a status or a heartbeat
	held        map[*Delivery]struct{}
	unseen      []*Delivery // held and not yet handed to fn, oldest first
	handedOn    uint64      // how many messages were handed to fn (see Delivery.handedOn)
	fnFailed    bool
	over        bool // handed over: what arrives now goes to the desk
	paused      bool
	pausedAt    time.Time
	resetPull   bool // requests may be lost (reconnect, missed heartbeat)
	retryAt     time.Time
	retryWait   time.Duration
	floor       resumePoint
	// strandedSearchFailed is set once the search for this subscription's
	// durable on other streams failed (see stranded).
	strandedSearchFailed bool
	// acked remembers what was acknowledged here lately; ackedAgain counts
	// redeliveries of it acknowledged again since ackedAgainLogged.
	acked            ackedHere
	ackedAgain       int
	ackedAgainLogged time.Time
	problem          problem
	// deadProblems is why each dead letter that cannot be published is
	// refused, by message (deadLetterKey): apart from
	// problem, which a working pull clears while the dead letter, and the
	// message it holds, still wait.
	deadProblems map[string]*problem
	// readProblem is why the consumer's info cannot be read back. Delivery
	// goes on without it, so it fails neither Ping nor the readiness probe.
	readProblem problem
	pinID       string // the pin JetStream gave this subscription (priorityPolicy pinned)
	// lease keeps the pin while paused with messages the app has not seen
	// (see pinLease).
	lease *pinLease
	// lastFailures holds the sequences of the last lastSeen messages whose
	// last allowed delivery failed here (noteLast), lastNext where the next
	// one goes.
	lastFailures [lastSeen]uint64
	lastNext     int
	counters     *subCounters
	// log carries the topic and the consumer as fields.
	log logger.Logger
}

// SubscribeDeliveries subscribes to req.Topic and calls fn for each message.
// It returns once the subscription is set up locally; the consumer is
// created in the background and re-created after NATS outages. The returned
// channel is closed when ctx is done and every held message has been settled
// or handed on.
func (p *PubSub) SubscribeDeliveries(ctx context.Context, req pubsub.SubscribeRequest, fn DeliverFunc) (<-chan struct{}, error) {
	s, err := p.subscribe(ctx, req, fn, nil, false)
	if err != nil {
		return nil, err
	}
	return s.done, nil
}

// subscribe sets up a subscription; before runs before its goroutines start.
// With alone, it is refused while another live subscription of p shares its
// durable (see sharedDurableLocked).
func (p *PubSub) subscribe(ctx context.Context, req pubsub.SubscribeRequest, fn DeliverFunc, before func(*subscription), alone bool) (*subscription, error) {
	cfg, _, _, err := p.state()
	if err != nil {
		return nil, err
	}
	if err := metadata.ValidSubject(req.Topic, true); err != nil {
		return nil, invalid("subscribe to", req.Topic, fmt.Errorf("%w: topic %s; use a NATS subject such as orders, orders.* or orders.>", ErrInvalidRequest, err))
	}
	consumerCfg, err := cfg.ForSubscription(req.Metadata)
	if err == nil {
		err = deadLetterLoop(req.Topic, consumerCfg)
	}
	if err != nil {
		return nil, invalid("subscribe to", req.Topic, err)
	}
	s := &subscription{
		p: p, topic: req.Topic, consumerCfg: consumerCfg, requested: time.Now().Add(-startSkew), fn: fn,
		done: make(chan struct{}), wake: make(chan struct{}, 1), ended: make(chan struct{}), ready: make(chan struct{}, 1),
		held: map[*Delivery]struct{}{}, retryWait: retryMin, floor: newResumePoint(), idleEvery: refreshIdle,
	}
	s.counters = p.stats.subscription(s.topic, s.statsConsumer())
	s.log = p.log.WithFields(map[string]any{"topic": s.topic, "consumer": s.statsConsumer()})
	if w := metadata.UnknownSubscriptionKeysWarning(metadata.UnknownSubscriptionKeys(req.Metadata)); w != "" {
		s.log.Warn(w)
	}
	if consumerCfg.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(consumerCfg.RateLimit), int(max(consumerCfg.RateLimit, 8<<20)))
	}
	// Derived from the caller's context, so that cancelling it stops
	// delivery at once: a watcher that stopped the subscription later let
	// the handler get more messages after the caller's cancel returned.
	s.ctx, s.cancel = context.WithCancel(ctx)

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		s.cancel()
		return nil, ErrClosed
	}
	if alone {
		if err := p.sharedDurableLocked(s); err != nil {
			p.mu.Unlock()
			s.cancel()
			return nil, err
		}
	}
	p.subs[s] = struct{}{}
	p.wg.Add(1)
	if s.paused = p.paused; s.paused {
		// What it takes over from an ended subscription waits for Resume
		// from now, as in any pause.
		s.pausedAt = time.Now()
	}
	p.mu.Unlock()

	if before != nil {
		before(s)
	}
	s.work.Add(1)
	go s.dispatchLoop()
	go s.run()
	go s.keepAliveLoop()
	return s, nil
}

// sharedDurableLocked says why s cannot have its durable to itself: another
// subscription of p, not ending, pulls from it, and each would get only part
// of the topic's messages, as replicas do. In-process, that is two handlers
// of one app that each expect every message. Over the socket it is not
// refused: daprd may open a topic's new stream while the one it replaces is
// still ending here. p.mu is held.
func (p *PubSub) sharedDurableLocked(s *subscription) error {
	name := s.durableName()
	if name == "" {
		return nil // ephemeral: each subscription has its own consumer
	}
	for o := range p.subs {
		if o.ctx.Err() == nil && o.topic == s.topic && o.durableName() == name {
			return invalid("subscribe to", s.topic, fmt.Errorf(
				"%w: topic %q already has a handler on durable consumer %q of this instance, and the two would share its messages; cancel the context of the first subscription, or set another consumerID in this subscription's metadata for a consumer that gets every message too",
				ErrInvalidRequest, s.topic, name))
		}
	}
	return nil
}

// Subscribe implements pubsub.PubSub. With concurrency single the handler
// sees one message at a time; with parallel, up to maxInFlight at once. A
// message is acknowledged only after its handler returned nil.
func (p *PubSub) Subscribe(ctx context.Context, req pubsub.SubscribeRequest, handler pubsub.Handler) error {
	_, err := p.subscribe(ctx, req, func(d *Delivery) error {
		if !d.sub.consumerCfg.Parallel {
			d.settleHandled(handler(d.sub.ctx, d.Message()))
			return nil
		}
		d.sub.work.Add(1)
		go func() {
			defer d.sub.work.Done()
			d.settleHandled(handler(d.sub.ctx, d.Message()))
		}()
		return nil
	}, nil, true)
	return err
}

// run is the housekeeping goroutine. When the subscription stops, it
// finishes it.
func (s *subscription) run() {
	// The first tick comes at a random point of the period, so that the
	// subscriptions an app makes together do not all keep house, and read
	// their consumers back, in the same instant.
	t := time.NewTimer(rand.N(tickEvery) + 1)
	defer t.Stop()
	for s.ctx.Err() == nil {
		s.housekeep(time.Now())
		select {
		case <-t.C:
			t.Reset(tickEvery)
		case <-s.wake:
		case <-s.ctx.Done():
		}
	}
	s.finish()
}

// housekeep does whatever the subscription needs now.
func (s *subscription) housekeep(now time.Time) {
	s.mu.Lock()
	paused, cs, retry := s.paused, s.consumer, now.Before(s.retryAt)
	s.mu.Unlock()
	if paused {
		s.expirePaused(now)
	}
	if cs == nil && !retry {
		s.setUp()
	}
	s.refresh(now)
	if !paused {
		s.adopt()
		s.checkPull(now)
		s.topUp()
	}
}

// poke wakes the housekeeping goroutine.
func (s *subscription) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// setUp finds or creates the consumer and starts pulling.
func (s *subscription) setUp() {
	// Without a connection the look-ups would only wait out apiTimeout and
	// be reported as JetStream not answering (leader elections, load), which
	// sends an operator the wrong way: say that NATS is away, and how long.
	// reconnected brings the next attempt forward once it is back.
	if err := s.p.notConnected(); err != nil {
		// Nothing is asked of JetStream meanwhile, and the first connection
		// (NATS not up at Init) does not start retrying over: keep the
		// short back-off.
		s.report(steady(err))
		s.backOff()
		return
	}
	asked := time.Now()
	cs, err := s.ensureConsumer(s.ctx)
	if err != nil {
		if s.ctx.Err() == nil {
			// The connection may have dropped during the look-ups.
			s.report(s.p.whileDown(s.p.explainDenied("subscribe to", s.topic, err, asked)))
			s.backOffLonger()
		}
		return
	}
	cs.idleEvery = jittered(s.idleEvery)
	s.mu.Lock()
	s.consumer = cs
	s.movedSince = time.Time{}
	s.floor.serverFloor(cs.stream, cs.streamCreated, cs.handle.CachedInfo().AckFloor.Stream)
	s.resetPull = false
	s.retryWait = retryMin
	s.mu.Unlock()
	s.report(nil)
	s.log.Infof("subscribed to topic %q with consumer %q on stream %q", s.topic, cs.name, cs.stream)
	s.notePause(cs, time.Time{})
	if !s.ackNone() {
		s.watchAbandoned(cs)
	}
	s.adopt()
}

// backOff delays the next attempt after a failure, doubling up to retryMax.
func (s *subscription) backOff() { s.backOffUpTo(retryMax) }

// backOffLonger is backOff for a failed set-up, which asks JetStream:
// once the problem has lasted stuckAfter, the next attempts wait
// retrySlow.
func (s *subscription) backOffLonger() {
	s.mu.Lock()
	stuck := s.problem.err != "" && time.Since(s.problem.since) >= stuckAfter
	if stuck {
		s.retryWait = retrySlow
	}
	s.mu.Unlock()
	if stuck {
		s.backOffUpTo(retrySlow)
	} else {
		s.backOff()
	}
}

// backOffUpTo delays the next attempt by the current wait, give or take a
// quarter so that subscriptions failing together do not retry in step,
// and doubles the wait up to limit.
func (s *subscription) backOffUpTo(limit time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retryAt = time.Now().Add(jittered(s.retryWait))
	s.retryWait = min(s.retryWait*2, limit)
}

// reconnected makes the subscription start over at once after NATS came
// back: whatever was requested before may be lost, and so may the consumer.
func (s *subscription) reconnected() {
	s.mu.Lock()
	s.resetPull = true
	s.retryAt, s.retryWait = time.Time{}, retryMin
	s.mu.Unlock()
	s.poke()
}

// adopt takes over the messages that an ended subscription of the same
// consumer held, ahead of anything new.
func (s *subscription) adopt() {
	s.mu.Lock()
	cs := s.consumer
	s.mu.Unlock()
	if cs == nil || cs.name == "" {
		return
	}
	ds, lease := s.p.desk.take(s.handoverKey(cs))
	if len(ds) == 0 {
		return
	}
	s.mu.Lock()
	if lease != nil && s.pinID == "" && cs.priority == natsjs.PriorityPolicyPinned && cs.group == lease.group {
		s.pinID = lease.id // ahead of anything newer, as the ended one would have
	}
	front := make([]*Delivery, 0, len(ds)+len(s.unseen))
	for _, d := range ds {
		c := d.handedTo(s)
		s.held[c] = struct{}{}
		if s.floor.holds(c) {
			s.floor.delivered(c.Sequence)
		}
		front = append(front, c)
	}
	s.unseen = append(front, s.unseen...)
	s.mu.Unlock()
	s.log.Infof("topic %q: took over %d messages that an ended subscription of consumer %q held", s.topic, len(ds), cs.name)
	s.signal()
}

func (s *subscription) handoverKey(cs *consumerState) handoverKey {
	return handoverKey{conn: s.p.connKey, stream: cs.stream, consumer: cs.name}
}

// signal wakes the dispatcher.
func (s *subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// dispatchLoop runs fn for the subscription. fn may take long (an in-process
// handler, or a gRPC send that waits for daprd to read): on its own
// goroutine it never keeps the inbox from receiving, so every message
// JetStream sent is tracked and kept alive while it waits its turn.
func (s *subscription) dispatchLoop() {
	defer s.work.Done()
	for {
		select {
		case <-s.ready:
			s.dispatch()
		case <-s.ctx.Done():
			return
		}
	}
}

// dispatch hands unseen messages to fn, in order, unless the subscription
// is paused or stopping.
func (s *subscription) dispatch() {
	for {
		s.mu.Lock()
		if s.paused || s.fnFailed || len(s.unseen) == 0 || s.ctx.Err() != nil {
			s.mu.Unlock()
			return
		}
		d := s.unseen[0]
		s.unseen[0] = nil
		s.unseen = s.unseen[1:]
		// Numbered before fn runs: an in-process handler may run, and give
		// the message up (see unhand), inside it.
		s.handedOn++
		d.handedOn = s.handedOn
		s.mu.Unlock()

		handed := s.deliver(d)

		s.mu.Lock()
		if !handed {
			d.handedOn = 0
			s.unseen = append([]*Delivery{d}, s.unseen...)
			s.fnFailed = true
		}
		s.mu.Unlock()
	}
}

// deliver hands d to fn; false when fn refused it.
func (s *subscription) deliver(d *Delivery) bool {
	if d.Settled() {
		return true
	}
	if s.limiter != nil {
		if err := s.limiter.WaitN(s.ctx, min(len(d.Data)*8, s.limiter.Burst())); err != nil {
			return false
		}
	}
	return s.fn(d) == nil
}

// noteAcked records in the resume point that d is acknowledged.
func (s *subscription) noteAcked(d *Delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.floor.holds(d) {
		s.floor.acked(d.Sequence)
	}
	s.acked.add(d)
}

// settled is called once for each delivery this subscription owns.
func (s *subscription) settled(d *Delivery) {
	s.mu.Lock()
	delete(s.held, d)
	if len(s.held) == 0 && s.consumer != nil {
		s.consumer.drained = true
	}
	done := s.leaseDoneLocked()
	s.mu.Unlock()
	if done != nil {
		s.p.unpin(done) // what the pin was kept for was answered while paused
	}
	s.pullIfRoom()
}

// keepAliveLoop keeps held messages alive until the subscription has handed
// everything on. It has its own goroutine, so that a slow JetStream API call
// in housekeeping never delays a keep-alive past the ack wait.
func (s *subscription) keepAliveLoop() {
	t := time.NewTimer(tickEvery)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			t.Reset(s.keepAlive(now))
		case <-s.ended:
			return
		}
	}
}

// keepAlive sends InProgress for held messages once half of the consumer's
// ack wait has passed, so slow handlers do not get a second copy of what
// they work on. The ack wait is the consumer's, kept current by refresh, as
// another replica may have changed it. It returns when to look again: often
// enough that a keep-alive is never late by more than an eighth of the wait.
func (s *subscription) keepAlive(now time.Time) time.Duration {
	s.mu.Lock()
	cs := s.consumer
	if cs == nil || cs.ackPolicy == natsjs.AckNonePolicy {
		s.mu.Unlock()
		return tickEvery
	}
	wait := cs.shortestAckWait()
	next := min(max(wait/8, 10*time.Millisecond), tickEvery)
	if len(s.held) == 0 {
		s.mu.Unlock()
		return next
	}
	var due []*Delivery
	for d := range s.held {
		if d.due(now, wait) {
			due = append(due, d)
		}
	}
	s.mu.Unlock()
	for _, d := range due {
		if d.keepAlive(s.p, now) {
			s.counters.inProgress.Add(1)
		}
	}
	return next
}

// expirePaused gives back messages held unseen for longer than
// handoverTimeout while paused, so that another subscriber gets them. A
// message that giving back would lose stays held, kept alive, for Resume:
// one on the last delivery that maxDeliver allows, or any, without acks.
func (s *subscription) expirePaused(now time.Time) {
	s.mu.Lock()
	if now.Sub(s.pausedAt) < handoverTimeout || len(s.unseen) == 0 || s.lease != nil {
		s.mu.Unlock()
		return // a kept pin gives them back itself, before unpinning
	}
	back, kept := s.unseenToGiveBackLocked()
	warn := len(kept) > 0 && !s.keptWarned
	s.keptWarned = s.keptWarned || len(kept) > 0
	s.mu.Unlock()
	if len(back) > 0 {
		s.log.Warnf("topic %q: paused for %s; giving %d messages back to JetStream", s.topic, handoverTimeout, len(back))
	}
	for _, d := range back {
		_ = d.giveBack(GivenBackPause)
	}
	if warn {
		s.log.Warnf("topic %q: paused for %s; keeping %s for Resume, since JetStream would not deliver them again (their last delivery that maxDeliver allows, or ackPolicy none)",
			s.topic, handoverTimeout, plural(int64(len(kept)), "message"))
	}
}

// unseenToGiveBackLocked takes out of s.unseen the messages JetStream
// would deliver again if given back, and returns them, and those kept.
// s.mu is held.
func (s *subscription) unseenToGiveBackLocked() (back, kept []*Delivery) {
	for _, d := range s.unseen {
		if s.lostIfGivenBackLocked(d) {
			kept = append(kept, d)
		} else {
			back = append(back, d)
		}
	}
	s.unseen = kept
	return back, kept
}

// lostIfGivenBackLocked reports whether JetStream would not deliver d
// again if it were given back. s.mu is held.
func (s *subscription) lostIfGivenBackLocked(d *Delivery) bool {
	ackPolicy, limit := s.consumerCfg.AckPolicy, s.consumerCfg.MaxDeliver
	if s.consumer != nil {
		ackPolicy, limit = s.consumer.ackPolicy, s.consumer.maxDeliver
	}
	return ackPolicy == natsjs.AckNonePolicy || (limit > 0 && d.deliveries() >= uint64(limit))
}

// ackNone reports whether the consumer takes no acks.
func (s *subscription) ackNone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ackNoneLocked()
}

func (s *subscription) ackNoneLocked() bool {
	if s.consumer != nil {
		return s.consumer.ackPolicy == natsjs.AckNonePolicy
	}
	return s.consumerCfg.AckPolicy == natsjs.AckNonePolicy
}

// nakDelay is the redelivery delay after a failed delivery: the backOff step
// for the delivery count, else nakDelay.
func (s *subscription) nakDelay(deliveries uint64) time.Duration {
	s.mu.Lock()
	b := s.consumerCfg.BackOff
	if s.consumer != nil {
		b = s.consumer.backOff
	}
	s.mu.Unlock()
	if len(b) > 0 {
		i := int(min(max(deliveries, 1)-1, uint64(len(b)-1)))
		return b[i]
	}
	return s.consumerCfg.NakDelay
}

// pause stops delivery and new pull requests. The returned channel closes
// once the open requests have ended, so that every message JetStream sent
// for them is received and held for Resume; then closeInbox withdraws the
// pull for good.
func (s *subscription) pause() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused {
		s.paused = true
		s.pausedAt = time.Now()
	}
	return s.quietLocked()
}

// resume takes up pulling again after pause. Not for a subscription that is
// ending: it has paused itself to withdraw its pull, and would keep its
// inbox otherwise.
func (s *subscription) resume() {
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.paused = false
	s.keptWarned = false
	s.fnFailed = false
	s.dropLeaseLocked() // its pull requests carry the pin again
	s.mu.Unlock()
	s.poke()
	s.signal()
}

func (s *subscription) stop() { s.cancel() }

// withdrawWait is how long to wait for the open pull requests to end: at
// most until the last of them must have ended, since a request lost with
// the server, or while NATS was away, never sends its end; and at most
// withdrawGrace.
func (s *subscription) withdrawWait() time.Duration {
	if !s.p.connected() {
		return 0 // nothing can arrive while NATS is away
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return min(withdrawGrace, max(0, time.Until(s.requestEnds)))
}

// finish withdraws the pull, waits for running handlers, hands what is still
// held to the next subscription of the consumer (or gives it back), and
// unregisters the subscription.
func (s *subscription) finish() {
	s.mu.Lock()
	s.paused = true
	quiet := s.quietLocked()
	s.mu.Unlock()
	waitUpTo(quiet, s.withdrawWait())
	waitUpTo(s.closeInbox(), withdrawGrace)
	handlersDone := make(chan struct{})
	go func() { s.work.Wait(); close(handlersDone) }()
	if !waitUpTo(handlersDone, handlerGrace) {
		s.log.Warnf("topic %q: handlers still running after %s; handing their messages on", s.topic, handlerGrace)
	}
	waitUpTo(s.deadLetters.idle(), deadLetterTimeout)
	s.handOver()
	s.mu.Lock()
	cs := s.consumer
	s.mu.Unlock()
	s.stopWatching(cs)
	s.giveUpPin()
	s.deleteEphemeral(cs)
	close(s.ended)
	s.p.mu.Lock()
	delete(s.p.subs, s)
	s.p.mu.Unlock()
	close(s.done)
	s.p.wg.Done()
}

// unpinTimeout bounds giving up the pin as a subscription ends.
const unpinTimeout = time.Second

// deleteEphemeralTimeout bounds deleting an ended subscription's ephemeral
// consumer.
const deleteEphemeralTimeout = time.Second

// deleteEphemeral deletes the ephemeral consumer of an ended subscription:
// no other subscription ever reads it, and JetStream would otherwise keep
// it, with its state and, under interest retention, the messages it has not
// acknowledged, until its inactive threshold (5 minutes) passes. A daprd
// restarted on every change of its app would leave one per topic per
// restart. Without NATS it stays, and the threshold removes it.
func (s *subscription) deleteEphemeral(cs *consumerState) {
	if cs == nil || !cs.ephemeral || cs.name == "" || !s.p.connected() {
		return
	}
	// The instance may be closing: its connection stays open until every
	// subscription has finished.
	s.p.mu.Lock()
	js := s.p.js
	s.p.mu.Unlock()
	if js == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), deleteEphemeralTimeout)
	defer cancel()
	if err := js.DeleteConsumer(ctx, cs.stream, cs.name); err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
		s.log.Warnf("topic %q: deleting ephemeral consumer %q on stream %q as its subscription ended: %v; JetStream deletes it once it has had no subscriber for %s, or delete it now with `nats consumer rm %s %s`",
			s.topic, cs.name, cs.stream, err, ephemeralInactive, cs.stream, cs.name)
	}
}

// giveUpPin gives up the pin that JetStream gave this subscription
// (priority policy pinned), once it pulls no more (paused or ended), so
// that a waiting replica takes over at once rather than after pinnedTTL,
// which is for replicas that die. Only a pin this subscription still holds
// is given up: another replica may hold it now. After Resume, it waits in
// line.
func (s *subscription) giveUpPin() {
	s.mu.Lock()
	// Read under the lock: housekeeping updates the consumer from its info.
	l := s.leaseLocked(time.Now())
	s.pinID = ""
	s.mu.Unlock()
	if l != nil {
		s.p.unpin(l)
	}
}

// handOver passes every message still held to the handover desk, where the
// next subscription of the same consumer finds it. An ephemeral consumer has
// no next subscription: its messages go back to JetStream.
func (s *subscription) handOver() {
	s.mu.Lock()
	s.over = true
	cs := s.consumer
	var taken []*Delivery
	for d := range s.held {
		if d.take() {
			taken = append(taken, d)
		}
	}
	s.held = map[*Delivery]struct{}{}
	s.unseen = nil
	if d := firstInLine(taken); d != nil {
		d.endsFirstInLine++
	}
	// The pin goes with what was held: to the next subscription, or it is
	// given up once that is given back (see pinLease).
	lease := s.dropLeaseLocked()
	if lease == nil && len(taken) > 0 {
		lease = s.leaseLocked(time.Now())
	}
	if len(taken) == 0 || cs == nil || cs.ephemeral {
		lease = nil
	}
	if lease != nil {
		s.pinID = ""
	}
	s.mu.Unlock()
	s.pass(cs, taken, lease)
}

// unhand marks d as never handed on: the handler returned without handling
// it, as its subscription ended. A message the app did not handle cannot
// have made daprd stop, and must not count towards maxEndsFirstInLine.
func (s *subscription) unhand(d *Delivery) {
	s.mu.Lock()
	d.handedOn = 0
	s.mu.Unlock()
}

// firstInLine is, of the unsettled messages taken from an ending
// subscription, the one handed on earliest, or nil when none was handed
// on. If daprd stopped because of a message, it is this one: daprd 1.18
// handles a subscription's messages one at a time, in the order it got
// them, so those behind it were only waiting, and a message daprd never got
// cannot have made it stop. Only this one counts an end towards
// maxEndsFirstInLine, so that restarts of a daprd that makes progress
// never use up the deliveries of what waits behind. A daprd that handles
// messages side by side (1.14) answers the others, and the one that makes
// it crash comes first once it is taken over, as handed-over messages are
// handed on first.
func firstInLine(taken []*Delivery) *Delivery {
	var first *Delivery
	for _, d := range taken {
		if d.handedOn > 0 && (first == nil || d.handedOn < first.handedOn) {
			first = d
		}
	}
	return first
}

// pass hands taken messages to the desk, or back to JetStream when the
// consumer is ephemeral.
func (s *subscription) pass(cs *consumerState, taken []*Delivery, lease *pinLease) {
	if len(taken) == 0 {
		return
	}
	sortBySequence(taken)
	if cs == nil || cs.name == "" || cs.ephemeral {
		for _, d := range taken {
			if cs != nil && cs.ackPolicy != natsjs.AckNonePolicy {
				_ = d.answer(s.p, nakBody)
			}
		}
		return
	}
	for _, d := range taken {
		d.leftBy = s.p.stats
	}
	s.p.desk.leave(s.handoverKey(cs), taken, handoverTerms{
		ackWait: cs.shortestAckWait(), ackNone: cs.ackPolicy == natsjs.AckNonePolicy, maxDeliver: cs.maxDeliver, statsConsumer: s.statsConsumer(),
		created: cs.handle.CachedInfo().Created,
	}, lease, s.p)
}

// waitUpTo waits for ch to close, at most d; false when it did not.
func waitUpTo(ch <-chan struct{}, d time.Duration) bool {
	if ch == nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// isPaused reports whether the subscription is paused.
func (s *subscription) isPaused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused
}

// pending counts work in progress that an ending subscription waits for.
// Unlike a sync.WaitGroup, it may count up again while someone waits.
type pending struct {
	mu sync.Mutex
	n  int
	// zero is closed when n drops to 0. It is made only when idle is
	// asked while something is counted, so that counting a call, as every
	// publish does, allocates nothing.
	zero chan struct{}
}

func (w *pending) add() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
}

func (w *pending) done() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n--
	if w.n == 0 && w.zero != nil {
		close(w.zero)
		w.zero = nil
	}
}

// idle returns a channel that is closed once nothing is counted.
func (w *pending) idle() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == 0 {
		return closedChan
	}
	if w.zero == nil {
		w.zero = make(chan struct{})
	}
	return w.zero
}
