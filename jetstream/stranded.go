package jetstream

import (
	"context"
	"errors"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// strandedScanTimeout bounds the search for a durable left on another
// stream, which asks JetStream once per stream: NATS may not allow this
// user to read the consumers of other streams, and a refused request goes
// unanswered until it times out.
const strandedScanTimeout = time.Second

// stranded finds the durable of this subscription on a stream other than
// the topic's, with messages the app has not handled, when the topic's
// stream has no such durable yet. An operator moved the topic away from
// that stream (nats stream edit) while no subscription read it, so no
// subscription drained it before following the topic; its messages would
// otherwise never reach the app. The consumer it returns is marked moved:
// the subscription delivers what it holds, then follows the topic to its
// stream, starting there from when the old stream last stored a message of
// the topic. nil when there is none, or the search failed (then it is not
// tried again by this subscription).
func (s *subscription) stranded(ctx context.Context, js natsjs.JetStream, topicStream, durable string, lost uint64) *consumerState {
	s.mu.Lock()
	skip := s.strandedSearchFailed
	s.mu.Unlock()
	if skip {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, strandedScanTimeout)
	defer cancel()
	if _, err := js.Consumer(ctx, topicStream, durable); !errors.Is(err, natsjs.ErrConsumerNotFound) {
		return nil
	}
	names := js.StreamNames(ctx)
	var found natsjs.Consumer
	for name := range names.Name() {
		if found != nil || name == topicStream {
			continue // the lister's channel is drained either way
		}
		if c, err := js.Consumer(ctx, name, durable); err == nil && s.leftBehind(c.CachedInfo()) {
			found = c
		}
	}
	if found == nil {
		err := names.Err()
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			s.mu.Lock()
			s.strandedSearchFailed = true
			s.mu.Unlock()
			s.log.Infof("topic %q: could not look for consumer %q on the streams other than %q (%v). Should the topic have moved to %q while no subscription read it, what the old stream holds for the consumer is not delivered: nats consumer info <old stream> %s shows it",
				s.topic, durable, topicStream, err, topicStream, durable)
		}
		return nil
	}
	return s.adoptStranded(ctx, js, found, topicStream, lost)
}

// leftBehind reports whether info is of a durable made for this topic with
// messages not yet handled.
func (s *subscription) leftBehind(info *natsjs.ConsumerInfo) bool {
	return info.Config.FilterSubject == s.topic && len(info.Config.FilterSubjects) == 0 &&
		(info.NumPending > 0 || info.NumAckPending > 0)
}

// adoptStranded sets up the subscription on c, a durable left behind on a
// stream that no longer holds the topic, if that stream reads as such.
func (s *subscription) adoptStranded(ctx context.Context, js natsjs.JetStream, c natsjs.Consumer, topicStream string, lost uint64) *consumerState {
	info := c.CachedInfo()
	st, err := js.Stream(ctx, info.Stream)
	if err != nil {
		return nil
	}
	cfg := st.CachedInfo().Config
	_, _, streams, err := s.p.state()
	// A stream that sources or mirrors others may hold copies of the
	// topic's messages without having held the topic.
	if err != nil || streams.takes(cfg, s.topic) || len(cfg.Sources) > 0 || cfg.Mirror != nil {
		return nil
	}
	created := st.CachedInfo().Created
	s.p.answers.streamRead(streamKey{conn: s.p.connKey, stream: info.Stream}, created, lost)
	cs := s.p.newConsumerState(c, created, false)
	cs.moved = true
	cs.coveredAt = time.Now()
	if last, err := st.GetLastMsgForSubject(ctx, s.topic); err == nil {
		cs.coveredAt = last.Time
	}
	if info.Config.AckPolicy != natsjs.AckNonePolicy {
		cs.abandonedSub = s.listenAbandoned(info.Stream, info.Name)
	}
	s.log.Warnf("topic %q: consumer %q on stream %q, which no longer holds the topic, has %s pending and %s awaiting an ack: the topic was moved to stream %q while no subscription read it. Delivering those first, then following the topic",
		s.topic, info.Name, info.Stream, plural(int64(info.NumPending), "message"), plural(int64(info.NumAckPending), "message"), topicStream)
	return cs
}
