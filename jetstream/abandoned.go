package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/nats-io/nats.go"
)

// maxDeliveriesAdvisory is JetStream's notice that a consumer stopped
// delivering a message because maxDeliver ran out.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// abandonedPrefix starts the subjects where JetStream sends that notice.
const abandonedPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// abandonedSubject is where JetStream sends that notice for one consumer.
func abandonedSubject(stream, consumer string) string {
	return abandonedPrefix + stream + "." + consumer
}

// watchAbandoned listens for the messages consumer cs stops delivering
// without a last failure this subscription knew to be the last: an operator
// lowered max_deliver, or the last delivery ended in another process, which
// gave it back or went away. Those still go to the dead-letter subject, or
// to the log. Replicas that share the consumer share the notices through a
// queue group, so one of them handles each (see abandonedGroup). Without
// permission to subscribe to advisories, only the last failures seen here
// are handled.
func (s *subscription) watchAbandoned(cs *consumerState) {
	s.mu.Lock()
	watching := cs.abandonedSub != nil
	s.mu.Unlock()
	if watching {
		return
	}
	sub := s.listenAbandoned(cs.stream, cs.name)
	s.mu.Lock()
	cs.abandonedSub = sub
	s.mu.Unlock()
}

// listenAbandoned subscribes to the notices of durable on stream, or
// returns nil when it cannot.
func (s *subscription) listenAbandoned(stream, durable string) *nats.Subscription {
	nc := s.p.conn()
	if nc == nil || durable == "" {
		return nil
	}
	if cfg, _, _, err := s.p.state(); err == nil && cfg.Connection.APIPrefix != "" {
		s.p.importedAdvisories.Do(func() {
			s.log.Infof("JetStream is reached through apiPrefix %q, so its advisories are published in the account that has JetStream: unless this account imports %s> from it, a message that JetStream stops delivering after maxDeliver, with no last failure seen here, is neither dead-lettered nor logged", cfg.Connection.APIPrefix, abandonedPrefix)
		})
	}
	sub, err := nc.QueueSubscribe(abandonedSubject(stream, durable), abandonedGroup(durable, s.consumerCfg.DeadLetterSubject), func(m *nats.Msg) {
		var a maxDeliveriesAdvisory
		if json.Unmarshal(m.Data, &a) == nil && a.StreamSeq > 0 {
			// Each on its own, as the last failures seen here are: a dead
			// letter that its stream keeps refusing must not hold up the
			// notices behind it, whose messages JetStream has dropped too.
			s.deadLetters.add()
			go func() {
				defer s.deadLetters.done()
				s.abandoned(a)
			}()
		}
	})
	if err != nil {
		s.log.Debugf("topic %q: not listening for messages consumer %q stops delivering: %v", s.topic, durable, err)
		return nil
	}
	return sub
}

// abandonedGroup is the queue group of the replicas of consumer that
// handle its notices alike: those that dead-letter to deadLetterSubject, or,
// when it is empty, those that log. In a rolling update that adds or
// changes deadLetterSubject, old and new replicas are in different groups,
// so each group gets every notice: the new replicas dead-letter each
// message, whichever replica the old ones' group picked to log it.
func abandonedGroup(consumer, deadLetterSubject string) string {
	if deadLetterSubject == "" {
		return "dapr-" + consumer
	}
	h := fnv.New32a()
	h.Write([]byte(deadLetterSubject))
	return fmt.Sprintf("dapr-%s-dead-%08x", consumer, h.Sum32())
}

// stopWatching stops listening for cs's notices.
func (s *subscription) stopWatching(cs *consumerState) {
	if cs == nil {
		return
	}
	s.mu.Lock()
	sub := cs.abandonedSub
	cs.abandonedSub = nil
	s.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
}

// abandoned handles a message that JetStream will not deliver again.
func (s *subscription) abandoned(a maxDeliveriesAdvisory) {
	if s.warnedLast(a.StreamSeq) {
		return // its last failure was handled here already
	}
	if s.consumerCfg.DeadLetterSubject == "" {
		s.log.Warnf("topic %q: JetStream stopped delivering the message at sequence %d of stream %q after %d deliveries, the maxDeliver of consumer %q, without a last failure seen here; set deadLetterSubject to keep such messages",
			s.topic, a.StreamSeq, a.Stream, a.Deliveries, a.Consumer)
		return
	}
	retry := s.newDeadLetterRetry()
	key := deadLetterKey(a.Stream, a.StreamSeq)
	for {
		asked := time.Now()
		subject, err := s.deadLetterStored(a)
		if err == nil {
			s.reportDeadLetter(key, nil)
			return
		}
		// Like a held dead letter, one refused for good fails Ping and the
		// readiness probe, although no message is held: it is kept only
		// in its stream, where limits may remove it.
		s.reportDeadLetter(key, s.deadLetterProblem(subject, err, asked, fmt.Sprintf(
			"the message at sequence %d of stream %q, which JetStream stopped delivering after %d deliveries", a.StreamSeq, a.Stream, a.Deliveries)))
		if !retry.wait() {
			s.forgetDeadLetter(key)
			s.log.Errorf("topic %q: the subscription ended before the message at sequence %d of stream %q, which JetStream stopped delivering, reached the dead-letter subject",
				s.topic, a.StreamSeq, a.Stream)
			return
		}
	}
}

// deadLetterStored reads the message a names from its stream and publishes
// it to the dead-letter subject, which it returns. Until the message is
// read, that is the subject of the subscription's topic.
func (s *subscription) deadLetterStored(a maxDeliveriesAdvisory) (string, error) {
	subject := s.consumerCfg.DeadLetterFor(s.topic)
	_, js, _, err := s.p.state()
	if err != nil {
		return subject, err
	}
	ctx, cancel := context.WithTimeout(s.ctx, apiTimeout)
	defer cancel()
	st, err := js.Stream(ctx, a.Stream)
	if err != nil {
		return subject, err
	}
	raw, err := st.GetMsg(ctx, a.StreamSeq)
	if err != nil {
		return subject, fmt.Errorf("reading it from the stream: %w", err)
	}
	subject = s.consumerCfg.DeadLetterFor(raw.Subject)
	cause := fmt.Errorf("JetStream stopped delivering it after %d deliveries, the consumer's maxDeliver", a.Deliveries)
	msg := deadLetterOf(subject, origin{subject: raw.Subject, stream: a.Stream, streamCreated: st.CachedInfo().Created,
		sequence: a.StreamSeq, consumer: a.Consumer, deliveries: a.Deliveries}, raw.Data, raw.Header, cause)
	return subject, s.publishDeadLetter(msg)
}
