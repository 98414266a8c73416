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

// Headers of a dead letter: where the message came from and why it failed.
// A Dapr app that subscribes to the dead-letter subject gets them as
// metadata.
const (
	HeaderDeadLetterSubject    = "Dead-Letter-Subject"
	HeaderDeadLetterStream     = "Dead-Letter-Stream"
	HeaderDeadLetterSequence   = "Dead-Letter-Sequence"
	HeaderDeadLetterConsumer   = "Dead-Letter-Consumer"
	HeaderDeadLetterDeliveries = "Dead-Letter-Deliveries"
	HeaderDeadLetterError      = "Dead-Letter-Error"
)

const (
	// maxDeadLetterError bounds the error text kept in a dead letter.
	maxDeadLetterError = 1024
	// deadLetterTimeout bounds one attempt to publish a dead letter.
	deadLetterTimeout = 5 * time.Second
	// deadLetterRetryMin and deadLetterRetryMax are the shortest and the
	// longest wait between attempts.
	deadLetterRetryMin = 100 * time.Millisecond
	deadLetterRetryMax = 5 * time.Second
)

// deadLetterLoop refuses a dead-letter subject that the subscription's own
// topic covers: a failed message would be delivered to it again, and fail
// again, for ever.
func deadLetterLoop(topic string, consumerCfg metadata.Consumer) error {
	if consumerCfg.DeadLetterSubject == "" {
		return nil
	}
	dl := consumerCfg.DeadLetterFor(exampleSubject(topic))
	if metadata.SubjectCovers(topic, dl) {
		return fmt.Errorf("%w: deadLetterSubject %q: topic %q covers %q, so failed messages would come back to this subscription; choose a subject outside the topic (the topic's own dead letters cannot go under it), or set deadLetterSubject to \"\" in this subscription's metadata to keep dead letters of its messages off",
			ErrInvalidRequest, consumerCfg.DeadLetterSubject, topic, dl)
	}
	return nil
}

// exampleSubject is a subject that topic, which may have wildcards, matches.
func exampleSubject(topic string) string {
	tokens := strings.Split(topic, ".")
	for i, t := range tokens {
		if t == "*" || t == ">" {
			tokens[i] = "x"
		}
	}
	return strings.Join(tokens, ".")
}

// lastDelivery reports whether JetStream will not deliver d again once this
// delivery fails: it has had every delivery the consumer's maxDeliver
// allows, as the server has the consumer.
func (s *subscription) lastDelivery(d *Delivery) bool {
	limit := s.maxDeliver()
	return limit > 0 && d.deliveries() >= uint64(limit)
}

func (s *subscription) maxDeliver() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.consumer != nil {
		return s.consumer.maxDeliver
	}
	return s.consumerCfg.MaxDeliver
}

// lastSeen is how many last failures a subscription remembers, so that
// JetStream's notice of the same message does not log it twice.
const lastSeen = 64

// noteLast remembers that the last failure of the message at seq was
// handled here.
func (s *subscription) noteLast(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastFailures[s.lastNext%lastSeen] = seq
	s.lastNext++
}

// warnedLast reports whether the last failure of the message at seq was
// handled here.
func (s *subscription) warnedLast(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.lastFailures {
		if v == seq {
			return true
		}
	}
	return false
}

// lastFailed handles the failure of d's last allowed delivery: with a
// dead-letter subject, the message goes there before the original is
// terminated; without one, the log says what JetStream is abandoning.
func (s *subscription) lastFailed(d *Delivery, cause error) error {
	if s.consumerCfg.DeadLetterSubject == "" {
		s.noteLast(d.Sequence)
		s.log.Warnf("topic %q: the last delivery that maxDeliver allows (%d of maxDeliver %d) failed for the message at sequence %d of stream %q (subject %q): %v; JetStream will not deliver it again. Set deadLetterSubject to keep such messages",
			s.topic, d.deliveries(), s.maxDeliver(), d.Sequence, d.Metadata[MetadataStream], d.Metadata[MetadataSubject], cause)
		return d.Nak()
	}
	if d.Settled() || !d.deadLettering.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	s.deadLetters.add()
	go func() {
		defer s.deadLetters.done()
		s.deadLetter(d, cause)
	}()
	return nil
}

// deadLetter publishes d to its dead-letter subject, trying until JetStream
// acknowledges it, and then terminates the original. Meanwhile d stays held
// and kept alive, so that it is not lost while, say, NATS is away or the
// subject has no stream yet. It gives up only when d is settled otherwise:
// handed to another subscription, or given back at the end.
func (s *subscription) deadLetter(d *Delivery, cause error) {
	subject := s.consumerCfg.DeadLetterFor(d.Metadata[MetadataSubject])
	msg := deadLetterMsg(subject, d, cause)
	retry := s.newDeadLetterRetry()
	key := deadLetterKey(d.Metadata[MetadataStream], d.Sequence)
	for {
		asked := time.Now()
		err := s.publishDeadLetter(msg)
		if err == nil {
			s.reportDeadLetter(key, nil)
			break
		}
		if d.Settled() {
			s.forgetDeadLetter(key)
			s.log.Warnf("topic %q: stopped publishing the message at sequence %d of stream %q to dead-letter subject %q: it was handed to another subscription, or given back as its subscription ended (%v)",
				s.topic, d.Sequence, d.Metadata[MetadataStream], subject, err)
			return
		}
		// The message keeps its place of maxInFlight meanwhile: with a
		// refusal that lasts, the subscription delivers less, or nothing, and
		// Ping and the readiness probe say why, as for any other problem.
		s.reportDeadLetter(key, s.deadLetterProblem(subject, err, asked, fmt.Sprintf(
			"the message at sequence %d of stream %q, held until it is stored there", d.Sequence, d.Metadata[MetadataStream])))
		if !retry.wait() {
			s.forgetDeadLetter(key)
			if !d.Settled() {
				s.log.Warnf("topic %q: the subscription ended before the message at sequence %d of stream %q reached dead-letter subject %q; it is given back, and JetStream announces it to the next subscription of the consumer when that asks for messages, which dead-letters it",
					s.topic, d.Sequence, d.Metadata[MetadataStream], subject)
			}
			return
		}
	}
	if !d.take() {
		return // handed on meanwhile: its new owner settles it
	}
	defer s.settled(d)
	s.counters.terms.Add(1)
	s.noteAcked(d) // terminated, it is handled as far as a new consumer's start goes
	if err := d.answer(s.p, []byte("+TERM dead-lettered to "+subject)); err != nil {
		s.log.Warnf("topic %q: terminating the message at sequence %d after its dead letter: %v", s.topic, d.Sequence, err)
	}
}

// deadLetterKey names the message at seq of stream among those whose dead
// letters are under way.
func deadLetterKey(stream string, seq uint64) string {
	return stream + "/" + strconv.FormatUint(seq, 10)
}

// deadLetterProblem words why the dead letter of the message described by
// which, tried at asked, cannot be published to subject, with its kind: a
// refusal that lasts (the stream takes no message that large, or NATS does
// not allow this user to publish there or to look its stream up) fails Ping
// at once.
func (s *subscription) deadLetterProblem(subject string, err error, asked time.Time, which string) error {
	if denied := s.p.denied("dead-letter to", subject, err, asked); denied != nil {
		err = denied
	} else if _, _, streams, serr := s.p.state(); serr == nil {
		err = newRefusals(s.ctx, streams, subject).explain(err)
	}
	return classify("dead-letter to", subject, fmt.Errorf("%s (tried again in the background): %w", which, err))
}

// deadLetterRetry paces the attempts to publish a dead letter: the wait
// doubles up to deadLetterRetryMax, and ends when NATS reconnects, since
// the message, held meanwhile, keeps a place of maxInFlight.
type deadLetterRetry struct {
	s        *subscription
	interval time.Duration
	back     <-chan struct{} // taken before the attempt, so no reconnect is missed
}

func (s *subscription) newDeadLetterRetry() *deadLetterRetry {
	return &deadLetterRetry{s: s, interval: deadLetterRetryMin, back: s.p.comeBack()}
}

// wait waits before the next attempt, and reports false when the
// subscription ended meanwhile.
func (r *deadLetterRetry) wait() bool {
	select {
	case <-time.After(r.interval):
		r.interval = min(2*r.interval, deadLetterRetryMax)
	case <-r.back:
		r.interval = deadLetterRetryMin
	case <-r.s.ctx.Done():
		return false
	}
	r.back = r.s.p.comeBack()
	return true
}

// publishDeadLetter makes sure a stream stores the dead-letter subject and
// publishes msg there.
func (s *subscription) publishDeadLetter(msg *nats.Msg) error {
	js, streams, err := s.p.stateWhileClosing()
	if err != nil {
		return err
	}
	if err := s.p.notConnected(); err != nil {
		return err
	}
	// Not cancelled when the subscription ends: its end waits for this.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), deadLetterTimeout)
	defer cancel()
	stream, err := prepare(ctx, streams, msg.Subject, needs{})
	if err != nil {
		return err
	}
	if err := keptByInterest(ctx, js, stream, msg.Subject); err != nil {
		if errors.Is(err, natsjs.ErrStreamNotFound) {
			streams.forget(msg.Subject) // deleted: the next attempt looks it up, or makes it, again
		}
		return err
	}
	_, err = js.PublishMsg(ctx, msg)
	if isNoStream(err) {
		streams.forget(msg.Subject)
	}
	return err
}

// keptByInterest refuses to publish to subject in a stream with interest
// retention that no consumer takes it from: JetStream would acknowledge the
// dead letter and drop it at once.
func keptByInterest(ctx context.Context, js natsjs.JetStream, stream, subject string) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	if st.CachedInfo().Config.Retention != natsjs.InterestPolicy {
		return nil
	}
	list := st.ListConsumers(ctx)
	for info := range list.Info() {
		filters := append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...)
		for _, f := range filters {
			if (f == "" && len(filters) == 1) || (f != "" && metadata.SubjectCovers(f, subject)) {
				return nil
			}
		}
	}
	if err := list.Err(); err != nil {
		return err
	}
	return fmt.Errorf("stream %q has interest retention and no consumer takes %q, so JetStream would drop the dead letter at once; subscribe to the dead-letter subject, or store it in a stream with limits retention", stream, subject)
}

// deadLetterMsg is d as a dead letter on subject: its data and headers, the
// Dead-Letter-* headers, and a Nats-Msg-Id of its own, so that a dead letter
// published twice is stored once.
func deadLetterMsg(subject string, d *Delivery, cause error) *nats.Msg {
	return deadLetterOf(subject, origin{
		subject: d.Metadata[MetadataSubject], stream: d.Metadata[MetadataStream], streamCreated: d.streamCreated,
		sequence: d.Sequence, consumer: d.Metadata[MetadataConsumer], deliveries: d.deliveries(),
	}, d.Data, d.header, cause)
}

// origin is where a dead letter comes from.
type origin struct {
	subject, stream, consumer string
	streamCreated             time.Time
	sequence, deliveries      uint64
}

// id names the failure a dead letter records: the message, by its stream
// (the stream as created, since a stream made again under the same name
// numbers its messages from 1 again) and sequence, and the consumer that
// gave up on it, since each consumer of a topic fails it on its own.
func (o origin) id() string {
	return fmt.Sprintf("%s:%d:%d:%s", o.stream, o.streamCreated.UnixNano(), o.sequence, o.consumer)
}

// deadLetterOf is a message with data and header, from o, as a dead letter
// on subject.
func deadLetterOf(subject string, o origin, data []byte, header nats.Header, cause error) *nats.Msg {
	msg := nats.NewMsg(subject)
	msg.Data = data
	for k, v := range header {
		if !strings.HasPrefix(strings.ToLower(k), "nats-") {
			msg.Header[k] = v
		}
	}
	msg.Header[HeaderDeadLetterSubject] = []string{o.subject}
	msg.Header[HeaderDeadLetterStream] = []string{o.stream}
	msg.Header[HeaderDeadLetterSequence] = []string{strconv.FormatUint(o.sequence, 10)}
	msg.Header[HeaderDeadLetterConsumer] = []string{o.consumer}
	msg.Header[HeaderDeadLetterDeliveries] = []string{strconv.FormatUint(o.deliveries, 10)}
	msg.Header[HeaderDeadLetterError] = []string{headerText(cause)}
	msg.Header[natsjs.MsgIDHeader] = []string{scopedMsgID(subject, o.id())}
	return msg
}

// headerText is err's text as a header value: on one line, and bounded.
func headerText(err error) string {
	if err == nil {
		err = errors.New("the handler failed")
	}
	text := strings.Join(strings.Fields(err.Error()), " ")
	return truncate(text, maxDeadLetterError)
}
