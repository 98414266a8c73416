package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// pullExpiry is how long a pull request stays open. It is short, so that
	// withdrawing a pull means waiting for the open requests to end rather
	// than unsubscribing under them: JetStream may already be sending a
	// message to an inbox it has not yet seen go, and that message would
	// wait out the ack wait as if delivered (and count as a delivery).
	// Each request ends with its last message or with a timeout status, so a
	// request that did neither in time was lost (a server restarted, a
	// consumer moved): the subscription then asks again. That makes idle
	// heartbeats unnecessary unless the metadata sets one.
	pullExpiry = time.Second
	// expiryGrace is how long after its expiry a request's end may arrive.
	expiryGrace = time.Second
)

// The statuses JetStream answers a pull request with, besides messages.
const (
	statusHeartbeat = "100"
	statusNoMsgs    = "404"
	statusTimeout   = "408"
	statusConflict  = "409"
	// statusWrongPin ends a pull request that named a pin id JetStream no
	// longer has: another replica is pinned now.
	statusWrongPin = "423"

	// headerPinID carries, on each message to the pinned subscription, the
	// pin id its next pull requests must name.
	headerPinID = "Nats-Pin-Id"
	// headerMsgSize marks a message sent without its data, by a consumer
	// with headers_only: it gives the size of the data left in the stream.
	headerMsgSize = "Nats-Msg-Size"
)

// openInboxLocked subscribes to a new inbox for the pull. s.mu is held.
func (s *subscription) openInboxLocked() error {
	nc := s.p.conn()
	if nc == nil {
		return ErrClosed
	}
	drained := make(chan struct{})
	sub, err := nc.Subscribe(nc.NewInbox(), s.onMsg)
	if err != nil {
		return err
	}
	// Held plus requested never exceeds maxInFlight, so the inbox holds at
	// most that many messages; nats.go's default limits would drop large
	// ones as a slow consumer.
	_ = sub.SetPendingLimits(-1, -1)
	sub.SetClosedHandler(func(string) { close(drained) })
	s.inbox, s.drained, s.inboxSince = sub, drained, time.Now()
	s.outstanding = 0
	s.lastHeard = time.Now()
	return nil
}

// quietLocked returns a channel that closes once no pull request is open:
// every message JetStream sent for them has been received. The caller has
// stopped new requests (paused). s.mu is held.
func (s *subscription) quietLocked() <-chan struct{} {
	if s.inbox == nil || s.outstanding == 0 {
		return closedChan
	}
	if s.quiet == nil {
		s.quiet = make(chan struct{})
	}
	return s.quiet
}

// requestsEndedLocked notes that requests ended; when none is open, whoever
// waits for quiet is told. s.mu is held.
func (s *subscription) requestsEndedLocked() {
	if s.outstanding <= 0 && s.quiet != nil {
		s.outstanding = 0
		close(s.quiet)
		s.quiet = nil
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// closeInbox unsubscribes the pull's inbox while paused, once its requests
// ended (or the wait for them gave up), and returns a channel that closes
// when what it received was handled.
func (s *subscription) closeInbox() <-chan struct{} {
	s.mu.Lock()
	if !s.paused || s.inbox == nil {
		s.mu.Unlock()
		return nil
	}
	sub, drained := s.inbox, s.drained
	s.inbox, s.outstanding = nil, 0
	s.requestsEndedLocked()
	s.mu.Unlock()
	if !s.p.connected() {
		// A drain would wait for the server, and nothing can arrive.
		_ = sub.Unsubscribe()
		return nil
	}
	if err := sub.Drain(); err != nil {
		// The connection is closed: nothing more can arrive.
		_ = sub.Unsubscribe()
		return nil
	}
	return drained
}

// pullIfRoom asks JetStream for as many messages as there is room for, once
// that is at least half of maxInFlight (or anything, when nothing is held
// or requested), so that requests are few and the pipeline stays full.
func (s *subscription) pullIfRoom() { s.pull(false) }

// topUp also asks for less than half of the window when nothing is
// requested: messages held for long must not keep the rest of the window
// empty. It runs from housekeeping, so small requests stay rare.
func (s *subscription) topUp() { s.pull(true) }

func (s *subscription) pull(small bool) {
	s.mu.Lock()
	n, subject, inbox := s.roomLocked(small)
	if n == 0 {
		s.mu.Unlock()
		return
	}
	terms := s.pullTermsLocked()
	n = terms.capped(n)
	s.outstanding += n
	s.requestedAt = time.Now()
	s.requestEnds = s.requestedAt.Add(terms.expires + expiryGrace)
	s.mu.Unlock()
	for left := n; left > 0; {
		batch := left
		if terms.maxBatch > 0 {
			batch = min(batch, terms.maxBatch)
		}
		if err := s.p.request(subject, inbox, pullRequest(batch, terms)); err != nil {
			s.mu.Lock()
			s.outstanding = max(0, s.outstanding-left)
			s.requestsEndedLocked()
			s.mu.Unlock()
			return
		}
		left -= batch
	}
}

// pullTerms is how a pull request asks: for how long, with which
// heartbeat, for at most how many messages each, in at most how many
// requests at once, and with which priority.
type pullTerms struct {
	expires, heartbeat time.Duration
	maxBatch           int
	maxRequests        int
	prio               pullPriority
}

// capped is how many of n messages can be asked for in one go: JetStream
// refuses more open requests than the consumer's max_waiting.
func (t pullTerms) capped(n int) int {
	if t.maxBatch > 0 && t.maxRequests > 0 {
		return min(n, t.maxBatch*t.maxRequests)
	}
	return n
}

// pullTermsLocked follows the limits an operator may set on the consumer
// (max_batch, max_expires), which JetStream enforces by refusing larger
// requests. s.mu is held.
func (s *subscription) pullTermsLocked() pullTerms {
	t := pullTerms{heartbeat: s.heartbeat(), prio: s.priorityLocked()}
	t.expires = expiry(t.heartbeat)
	if cs := s.consumer; cs != nil {
		t.maxBatch = cs.maxRequestBatch
		// Half of max_waiting, since other replicas pull from the same
		// consumer.
		t.maxRequests = max(1, cs.maxWaiting/2)
		if cs.maxRequestExpires > 0 && t.expires > cs.maxRequestExpires {
			// JetStream refuses a heartbeat of more than half the expiry.
			t.expires, t.heartbeat = cs.maxRequestExpires, min(t.heartbeat, cs.maxRequestExpires/2)
		}
	}
	return t
}

// roomLocked returns how many messages to request now, and where; with
// small, any room counts while nothing is requested. s.mu is held.
func (s *subscription) roomLocked(small bool) (int, string, string) {
	if s.paused || s.consumer == nil || s.ctx.Err() != nil || time.Now().Before(s.retryAt) {
		return 0, "", ""
	}
	if s.inbox == nil {
		if err := s.openInboxLocked(); err != nil {
			return 0, "", ""
		}
	}
	limit := s.consumerCfg.MaxInFlight
	busy := len(s.held) + s.outstanding
	free := limit - busy
	batch := busy > 0 && !(small && s.outstanding == 0)
	if free <= 0 || (batch && free < refillAt(limit)) {
		return 0, "", ""
	}
	return free, s.consumer.next, s.inbox.Subject
}

// refillAt is how much of a window of limit must be free before more is
// requested (when anything is held or requested): half, as nats.go's
// Consume does, so that requests are few and the pipeline stays full.
func refillAt(limit int) int { return max(1, (limit+1)/2) }

func (s *subscription) heartbeat() time.Duration { return s.consumerCfg.Heartbeat }

// expiry is how long a pull request with heartbeat hb stays open.
func expiry(hb time.Duration) time.Duration { return max(pullExpiry, 2*hb) }

// pullPriority is what a pull request says to a consumer with a priority
// policy: its group, the pin id this subscription holds (pinned), and the
// pending count below which it is not served (overflow standbys).
type pullPriority struct {
	group      string
	pinID      string
	minPending int64
}

// priorityLocked is the priority part of the next pull request, following
// the consumer as the server has it. s.mu is held.
func (s *subscription) priorityLocked() pullPriority {
	cs := s.consumer
	if cs == nil || cs.priority == natsjs.PriorityPolicyNone || cs.group == "" {
		return pullPriority{}
	}
	p := pullPriority{group: cs.group}
	switch cs.priority {
	case natsjs.PriorityPolicyPinned:
		p.pinID = s.pinID
	case natsjs.PriorityPolicyOverflow:
		p.minPending = s.consumerCfg.MinPending
	}
	return p
}

// pullRequest is the JSON body of a pull request for n messages.
func pullRequest(n int, t pullTerms) []byte {
	expires, hb, prio := t.expires, t.heartbeat, t.prio
	b := make([]byte, 0, 80)
	b = append(b, `{"batch":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"expires":`...)
	b = strconv.AppendInt(b, expires.Nanoseconds(), 10)
	if hb > 0 {
		b = append(b, `,"idle_heartbeat":`...)
		b = strconv.AppendInt(b, hb.Nanoseconds(), 10)
	}
	if prio.group != "" {
		b = append(b, `,"group":`...)
		b = strconv.AppendQuote(b, prio.group)
	}
	if prio.pinID != "" {
		b = append(b, `,"id":`...)
		b = strconv.AppendQuote(b, prio.pinID)
	}
	if prio.minPending > 0 {
		b = append(b, `,"min_pending":`...)
		b = strconv.AppendInt(b, prio.minPending, 10)
	}
	return append(b, '}')
}

// checkPull starts the pull over when requests may be lost: after a
// reconnect, when neither messages nor heartbeats came for two heartbeat
// intervals while requests were open, or when the last request neither
// ended nor expired in time.
func (s *subscription) checkPull(now time.Time) {
	s.mu.Lock()
	hb := s.heartbeat()
	quiet := now.Sub(s.lastHeard)
	silent := s.outstanding > 0 &&
		((hb > 0 && quiet > 2*hb) || (quiet > expiryGrace && now.After(s.requestEnds)))
	reset := s.resetPull || silent
	cs := s.consumer
	if !reset || cs == nil {
		s.mu.Unlock()
		return
	}
	if silent {
		if err := s.deniedPullLocked(cs); err != nil {
			s.mu.Unlock()
			s.pullFailed(err)
			return
		}
	}
	back := s.resetPull
	s.resetPull = false
	s.outstanding = 0
	s.requestsEndedLocked()
	s.lastHeard = now
	s.mu.Unlock()
	if silent {
		s.log.Debugf("topic %q: pull requests went unanswered; pulling again", s.topic)
	}
	if back && s.streamReplaced(cs) {
		return
	}
	// Pull at once: reading the consumer back may wait for the election of
	// its new leader. Then check that the server still has the consumer: it
	// may have lost it with its state.
	s.pullIfRoom()
	s.verify(cs)
}

// deniedPullLocked is why pull requests went unanswered when NATS refused
// them: it drops a request the user may not publish, and removes a
// subscription the user may no longer have when its permissions change,
// telling only the connection's error handler. Retrying cannot fix either,
// so it is reported as such, naming the subject and the permission. A
// refused inbox is dropped here, so that the next pull subscribes again,
// which works once the permission is back. s.mu is held.
func (s *subscription) deniedPullLocked(cs *consumerState) error {
	p := s.p
	if subjects := p.denials.since(s.requestedAt, cs.next, ""); len(subjects) > 0 {
		api, _, _ := strings.Cut(cs.next, "CONSUMER.MSG.NEXT.")
		return &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"NATS does not allow this connection to publish to %q, so JetStream never answered the pull requests of consumer %q on stream %q; grant the NATS user publish permission for %s> (or for that subject), in the server's authorization or the user's JWT (nsc edit user --allow-pub)",
			cs.next, cs.name, cs.stream, api)}
	}
	if s.inbox == nil || !p.denials.subscribeRefused(s.inbox.Subject, s.inboxSince) {
		return nil
	}
	inbox := s.inbox.Subject
	_ = s.inbox.Unsubscribe()
	s.inbox = nil
	prefix, _, _ := strings.Cut(inbox, ".")
	return &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
		"NATS does not allow this connection to subscribe to %q, the inbox its pull requests ask JetStream to deliver to, so nothing arrives; grant the NATS user subscribe permission for %s.> in the server's authorization or the user's JWT (nsc edit user --allow-sub)",
		inbox, prefix)}
}

// streamReplaced reports, before the pull starts over, whether the
// consumer's stream was made again while requests may have been lost (NATS
// was away): a server that lost its store, or an operator, made it again,
// and a durable of the same name on it, made again by another replica,
// takes pull requests as if nothing happened, while its sequences now name
// other messages. The subscription is then set up again on the new stream,
// so that the messages of the old one it holds are told apart from them.
// A stream that cannot be read is left to verify. A stream read is told
// to p.answers too: answers for its messages need not wait any more.
func (s *subscription) streamReplaced(cs *consumerState) bool {
	_, js, _, err := s.p.state()
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, verifyTimeout)
	defer cancel()
	lost := s.p.answers.losses.Load()
	st, err := js.Stream(ctx, cs.stream)
	if err != nil {
		return false
	}
	created := st.CachedInfo().Created
	s.p.answers.streamRead(streamKey{conn: s.p.connKey, stream: cs.stream}, created, lost)
	if cs.streamCreated.IsZero() || created.Equal(cs.streamCreated) {
		return false
	}
	s.gone(fmt.Errorf("stream %q was made again while NATS was away", cs.stream))
	return true
}

// heldCopyLocked returns the unsettled message this subscription holds that
// d delivers again, if any. JetStream sends a message again when its ack
// wait ran out, which happens to a message the app is working on when the
// consumer's ack wait was lowered (by an operator, or by a rolling update)
// below the time spent on it: the app must not get it twice, and a
// keep-alive of the copy it has restarts the new ack wait. Acks by stream
// sequence settle either delivery.
func (s *subscription) heldCopyLocked(d *Delivery) *Delivery {
	for h := range s.held {
		if h.Sequence == d.Sequence && h.stream == d.stream && h.streamCreated.Equal(d.streamCreated) && !h.Settled() {
			return h
		}
	}
	return nil
}

// onMsg receives what JetStream sends to the inbox: messages, heartbeats
// and the statuses that end pull requests. It runs on the inbox's own
// goroutine, tracks each message and wakes the dispatcher.
func (s *subscription) onMsg(m *nats.Msg) {
	if status := m.Header.Get("Status"); status != "" && len(m.Data) == 0 {
		s.onStatus(m, status)
		return
	}
	if m.Subject != s.topic && !metadata.SubjectCovers(s.topic, m.Subject) {
		s.notForTopic(m)
		return
	}
	if m.Header.Get(headerMsgSize) != "" && !s.withData(m) {
		return
	}
	d := newDelivery(s, m)
	s.mu.Lock()
	if s.over {
		// The pull was withdrawn late (a handler did not return): JetStream
		// sent this before it knew.
		cs := s.consumer
		s.mu.Unlock()
		d.take()
		s.pass(cs, []*Delivery{d}, nil)
		return
	}
	s.lastHeard = time.Now()
	if s.outstanding > 0 && m.Sub == s.inbox {
		s.outstanding--
		s.requestsEndedLocked()
	}
	if pin := m.Header.Get(headerPinID); pin != "" {
		s.pinID = pin
	}
	s.counters.deliveries.Add(1)
	if d.Deliveries > 1 {
		s.counters.redeliveries.Add(1)
		if h := s.heldCopyLocked(d); h != nil {
			s.mu.Unlock()
			h.redelivered.Store(max(h.redelivered.Load(), d.Deliveries))
			h.keepAlive(s.p, time.Now())
			return
		}
		if s.acked.has(d) && !s.ackNoneLocked() {
			s.mu.Unlock()
			s.ackAgain(d)
			return
		}
	} else {
		s.acked.forget(d)
	}
	s.held[d] = struct{}{}
	s.floor.delivered(d.Sequence)
	s.unseen = append(s.unseen, d)
	s.retryWait = retryMin
	recovered := s.problem.err != ""
	s.mu.Unlock()
	if recovered {
		s.report(nil)
	}
	s.signal()
}

// withData reads from the stream the data of a message that came without
// it, from a consumer an operator set headers_only on, and has the
// consumer's settings read back so that it is turned off. A message whose
// data cannot be read is turned down (a delayed NAK), and reports false.
func (s *subscription) withData(m *nats.Msg) bool {
	s.mu.Lock()
	if cs := s.consumer; cs != nil {
		cs.refreshed = time.Time{}
	}
	s.mu.Unlock()
	s.poke()
	err := s.readData(m)
	if err == nil {
		return true
	}
	s.log.Warnf("topic %q: a message came without its data (headers_only on the consumer), and reading it from the stream failed: %v; it is sent again later", s.topic, err)
	_ = s.p.reply(m.Reply, nakWithDelay(time.Second))
	s.mu.Lock()
	if s.outstanding > 0 && m.Sub == s.inbox {
		s.outstanding--
		s.requestsEndedLocked()
	}
	s.mu.Unlock()
	return false
}

// readData replaces m's headers and data with the message as the stream
// stores it.
func (s *subscription) readData(m *nats.Msg) error {
	meta, err := m.Metadata()
	if err != nil {
		return err
	}
	_, js, _, err := s.p.state()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(s.ctx, verifyTimeout)
	defer cancel()
	st, err := js.Stream(ctx, meta.Stream)
	if err != nil {
		return err
	}
	raw, err := st.GetMsg(ctx, meta.Sequence.Stream)
	if err != nil {
		return err
	}
	m.Data, m.Header = raw.Data, raw.Header
	return nil
}

// notForTopicDelay is how long JetStream waits before it sends again a
// message that was not for the topic: by then the consumer is set up anew.
const notForTopicDelay = 30 * time.Second

// notForTopic turns down a message of a subject the topic does not cover,
// which comes from a consumer whose filter an operator changed: it is not
// the topic's app's to see. A delayed NAK leaves it in the stream (acked, a
// workqueue stream would remove it) without JetStream sending it again at
// once. The consumer's settings are read back now, so that it is set up
// again with the topic as its filter.
func (s *subscription) notForTopic(m *nats.Msg) {
	_ = s.p.reply(m.Reply, nakWithDelay(notForTopicDelay))
	s.mu.Lock()
	if s.outstanding > 0 && m.Sub == s.inbox {
		s.outstanding--
		s.requestsEndedLocked()
	}
	cs := s.consumer
	first := cs != nil && !cs.misfiltered
	if cs != nil {
		cs.misfiltered, cs.refreshed = true, time.Time{}
	}
	s.mu.Unlock()
	if first {
		s.log.Warnf("topic %q: consumer %q on stream %q sent a message of subject %q, which the topic does not cover, so its filter was changed; the message is left in the stream, and the consumer is set up again",
			s.topic, cs.name, cs.stream, m.Subject)
	}
	s.poke()
}

func (s *subscription) onStatus(m *nats.Msg, status string) {
	desc := strings.ToLower(m.Header.Get("Description"))
	s.mu.Lock()
	s.lastHeard = time.Now()
	current := m.Sub == s.inbox
	s.mu.Unlock()
	if !current {
		return // a withdrawn inbox: its requests are gone
	}
	switch {
	case status == statusHeartbeat, status == statusNoMsgs:
		// The pull works: a refused request before is fixed.
		s.report(nil)
	case status == statusTimeout:
		// A request ended; the header says how much of it went unused. It
		// was accepted, so the pull works.
		s.report(nil)
		s.unrequest(m)
	case status == statusConflict && strings.Contains(desc, "exceeds maxbytes"):
		s.unrequest(m)
	case status == statusConflict && strings.Contains(desc, "exceeded maxwaiting"):
		// Other replicas hold every request the consumer allows: this one
		// was not taken, and is asked again after a pause.
		s.notTaken()
	case status == statusWrongPin:
		// Another replica is pinned: wait in line, without a pin id.
		s.mu.Lock()
		s.pinID = ""
		s.mu.Unlock()
		s.unrequest(m)
	case status == statusConflict && strings.Contains(desc, "consumer deleted"):
		s.gone(errors.New("the consumer was deleted"))
	case status == statusConflict && (strings.Contains(desc, "leadership change") || strings.Contains(desc, "server shutdown")):
		s.mu.Lock()
		s.outstanding = 0
		s.requestsEndedLocked()
		s.resetPull = true
		s.mu.Unlock()
		s.poke()
	default:
		s.pullFailed(fmt.Errorf("JetStream refused a pull request for consumer %s: %s", s.consumerName(), pullRefusal(status, m.Header.Get("Description"))))
	}
}

// pullRefusal words a status that ended a pull request, which may come
// without a description.
func pullRefusal(status, desc string) string {
	if desc != "" {
		return status + " " + desc
	}
	if status == "503" {
		return "503 no responders: nothing serves the consumer: it or its stream is gone, JetStream is not available, or, in a cluster, the consumer has no leader yet (one is elected after the consumer is created, a server restarts or a leader steps down)"
	}
	return "status " + status
}

// unrequest takes what an ended pull request did not deliver off the count
// of requested messages, and asks again.
func (s *subscription) unrequest(m *nats.Msg) {
	n, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages"))
	s.mu.Lock()
	if err != nil {
		s.outstanding = 0
	} else {
		s.outstanding = max(0, s.outstanding-n)
	}
	s.requestsEndedLocked()
	s.mu.Unlock()
	s.pullIfRoom()
}

// notTaken takes a request JetStream turned away off the count of
// requested messages, and waits a little before asking again. The refusal
// does not say how much was asked, so it counts as a whole request.
func (s *subscription) notTaken() {
	s.mu.Lock()
	n := s.outstanding
	if s.consumer != nil && s.consumer.maxRequestBatch > 0 {
		n = min(n, s.consumer.maxRequestBatch)
	}
	s.outstanding -= n
	s.requestsEndedLocked()
	s.retryAt = time.Now().Add(retryMin)
	s.mu.Unlock()
}

// pullFailed records a refused pull request and backs off before the next.
// The consumer is looked up again: a request to one that no longer exists
// finds no responders.
func (s *subscription) pullFailed(err error) {
	s.mu.Lock()
	s.outstanding = 0
	s.requestsEndedLocked()
	s.resetPull = true
	s.mu.Unlock()
	s.report(err)
	s.backOff()
	s.poke()
}

func (s *subscription) consumerName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.consumer == nil {
		return ""
	}
	return fmt.Sprintf("%q on stream %q", s.consumer.name, s.consumer.stream)
}
