package jetstream

import (
	"context"
	"errors"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// A pinned subscription (priorityPolicy pinned) that stops pulling, as it
// pauses or ends, may still hold messages its app has not handled. Giving
// up the pin at once would let the replica pinned next handle newer
// messages before those, and the topic would no longer be processed in
// stream order. So the subscription keeps its pin, as a pinLease, until
// what it held is settled: taken by the next subscription of the consumer
// in this process (a restarted daprd), which takes the pin with it, or
// given back to JetStream, which redelivers it first to whoever is pinned
// next. JetStream ends a pin on its own once pinnedTTL passes without a
// pull request carrying it, so the lease gives back and unpins shortly
// before that.

// pinLease is a pin kept by a subscription that no longer pulls.
type pinLease struct {
	topic, stream, consumer, group, id string
	// deadline is when the lease gives back what waits and unpins: before
	// JetStream could end the pin, counted from the last pull request,
	// and no later than a handed-over message would wait anyway.
	deadline time.Time
	// timer releases the lease at deadline; its owner (a paused
	// subscription, or the handover desk) stops it when the lease moves.
	timer *time.Timer
}

// pinMargin is how long before JetStream would end a pin a lease is
// released: time to give messages back and unpin.
func pinMargin(ttl time.Duration) time.Duration { return min(ttl/4, 2*time.Second) }

// confirmTimeout bounds the wait for JetStream to confirm the last message
// given back before an unpin.
const confirmTimeout = time.Second

// leaseLocked returns a lease on s's pin, or nil when s holds none. s.mu
// is held.
func (s *subscription) leaseLocked(now time.Time) *pinLease {
	cs := s.consumer
	if cs == nil || cs.ephemeral || cs.priority != natsjs.PriorityPolicyPinned || s.pinID == "" || cs.pinnedTTL <= 0 {
		return nil
	}
	deadline := s.requestedAt.Add(cs.pinnedTTL - pinMargin(cs.pinnedTTL))
	if latest := now.Add(handoverTimeout); deadline.After(latest) {
		deadline = latest
	}
	return &pinLease{topic: s.topic, stream: cs.stream, consumer: cs.name, group: cs.group, id: s.pinID, deadline: deadline}
}

// keepPinWhilePaused keeps s's pin as it pauses when it holds messages its
// app has not handled: those not handed on yet are delivered after Resume,
// ahead of anything newer, or given back at the lease's deadline; those
// handed on (to daprd, which may hold them in its stream before its app
// sees them) are answered, or given back as the subscription ends. Once
// nothing is held, or at the deadline, the pin goes, so that a waiting
// replica takes over.
func (s *subscription) keepPinWhilePaused() {
	s.mu.Lock()
	if s.lease != nil {
		s.mu.Unlock()
		return
	}
	var l *pinLease
	if s.paused && len(s.held) > 0 {
		l = s.leaseLocked(time.Now())
	}
	if l != nil {
		s.lease = l
		l.timer = time.AfterFunc(time.Until(l.deadline), func() { s.releasePausedPin(l) })
	}
	s.mu.Unlock()
	if l == nil {
		s.giveUpPin()
	}
}

// leaseDoneLocked returns s's lease once nothing it kept the pin for is
// held any more, forgetting it and the pin; else nil. s.mu is held.
func (s *subscription) leaseDoneLocked() *pinLease {
	if s.lease == nil || len(s.held) > 0 {
		return nil
	}
	s.pinID = ""
	return s.dropLeaseLocked()
}

// dropLeaseLocked returns s's lease, stopped, and forgets it. s.mu is held.
func (s *subscription) dropLeaseLocked() *pinLease {
	l := s.lease
	s.lease = nil
	if l != nil {
		l.timer.Stop()
	}
	return l
}

// releasePausedPin gives back what s holds unseen while still paused at
// the lease's deadline, then gives up the pin. Messages that JetStream
// would not deliver again stay held for Resume (see expirePaused).
func (s *subscription) releasePausedPin(l *pinLease) {
	s.mu.Lock()
	if s.lease != l {
		s.mu.Unlock()
		return // resumed or ended meanwhile
	}
	s.lease, s.pinID = nil, ""
	back, _ := s.unseenToGiveBackLocked()
	s.mu.Unlock()
	taken := back[:0]
	for _, d := range back {
		if d.take() {
			taken = append(taken, d)
		}
	}
	if len(taken) > 0 {
		s.log.Warnf("topic %q: paused for %s while pinned; giving %s back to JetStream before the pin ends, so that the replica pinned next gets them first",
			s.topic, time.Since(s.pausedSince()).Round(time.Second), plural(int64(len(taken)), "message"))
	}
	s.p.release(l, taken, GivenBackPause)
	for _, d := range taken {
		s.settled(d)
	}
}

func (s *subscription) pausedSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pausedAt
}

// release gives ds, settled already, back to JetStream in stream order,
// and then gives up l's pin, so that the replica pinned next gets them
// before anything newer.
//
// While the pin is held by a subscription that no longer pulls, JetStream
// takes a message given back off the front of its redelivery queue each
// time another replica's request wakes it, finds no request it may serve,
// and puts it at the back: what is given back would come rotated. So the
// consumer is paused for that moment (unless an operator paused it
// already), and resumed once the pin is given up.
func (p *PubSub) release(l *pinLease, ds []*Delivery, reason string) {
	sortBySequence(ds)
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	st, info := p.consumerOf(ctx, l)
	pinned := info != nil && holdsPin(info, l.group, l.id)
	paused := pinned && len(ds) > 0 && !info.Paused && p.pauseFor(ctx, st, l)
	for i, d := range ds {
		p.stats.gaveBack(d.Topic, reason, 1)
		if i < len(ds)-1 || !pinned {
			_ = d.answer(p, nakBody)
		} else if err := d.answerConfirmed(p, nakBody); err != nil {
			p.log.Warnf("topic %q: JetStream did not confirm the messages given back before the pin of consumer %q is given up (%v); the replica pinned next may get newer messages first",
				l.topic, l.consumer, err)
		}
	}
	if pinned {
		p.unpinIn(ctx, st, l)
	}
	if paused {
		if _, err := st.ResumeConsumer(ctx, l.consumer); err != nil {
			p.log.Warnf("topic %q: resuming consumer %q on stream %q, paused while pinned messages were given back: %v; it resumes by itself within %s, or now with `nats consumer resume %s %s`",
				l.topic, l.consumer, l.stream, err, releasePause, l.stream, l.consumer)
		}
	}
}

const (
	// releaseTimeout bounds the JetStream API calls of a release.
	releaseTimeout = 2 * time.Second
	// releasePause is how long a release pauses the consumer for, at
	// most: should the process die before it resumes it, JetStream
	// resumes it then.
	releasePause = 5 * time.Second
)

// consumerOf reads l's consumer; nil info when JetStream cannot be asked,
// or the consumer is gone.
func (p *PubSub) consumerOf(ctx context.Context, l *pinLease) (natsjs.Stream, *natsjs.ConsumerInfo) {
	// The instance may be closing: its connection stays open until every
	// subscription has finished and the desk has let it go.
	p.mu.Lock()
	js := p.js
	p.mu.Unlock()
	if js == nil || !p.connected() {
		return nil, nil // pinnedTTL passes on the pin
	}
	st, err := js.Stream(ctx, l.stream)
	var c natsjs.Consumer
	if err == nil {
		c, err = st.Consumer(ctx, l.consumer)
	}
	if errors.Is(err, natsjs.ErrConsumerNotFound) || errors.Is(err, natsjs.ErrStreamNotFound) {
		return nil, nil // its pin went with it
	}
	if err != nil {
		p.log.Warnf("topic %q: reading consumer %q on stream %q to give up its pin: %v; another replica takes over once pinnedTTL has passed",
			l.topic, l.consumer, l.stream, err)
		return nil, nil
	}
	return st, c.CachedInfo()
}

// pauseFor pauses l's consumer for a release; false when it could not.
func (p *PubSub) pauseFor(ctx context.Context, st natsjs.Stream, l *pinLease) bool {
	if _, err := st.PauseConsumer(ctx, l.consumer, time.Now().Add(releasePause)); err != nil {
		p.log.Warnf("topic %q: pausing consumer %q on stream %q while pinned messages are given back: %v; the replica pinned next may get them in another order",
			l.topic, l.consumer, l.stream, err)
		return false
	}
	return true
}

// unpin gives up l's pin, if JetStream still has it.
func (p *PubSub) unpin(l *pinLease) {
	ctx, cancel := context.WithTimeout(context.Background(), unpinTimeout)
	defer cancel()
	if st, info := p.consumerOf(ctx, l); info != nil && holdsPin(info, l.group, l.id) {
		p.unpinIn(ctx, st, l)
	}
}

func (p *PubSub) unpinIn(ctx context.Context, st natsjs.Stream, l *pinLease) {
	if err := st.UnpinConsumer(ctx, l.consumer, l.group); err != nil {
		p.log.Warnf("topic %q: giving up the pin of consumer %q on stream %q: %v; another replica takes over once pinnedTTL has passed",
			l.topic, l.consumer, l.stream, err)
	}
}

// holdsPin reports whether pin is the one pinned in group of consumer info.
func holdsPin(info *natsjs.ConsumerInfo, group, pin string) bool {
	for _, g := range info.PriorityGroups {
		if g.Group == group {
			return g.PinnedClientID == pin
		}
	}
	return false
}
