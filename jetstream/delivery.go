package jetstream

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Metadata keys added to every delivered message, besides its NATS headers.
const (
	MetadataTopic      = "Topic" // the subject, as the built-in component names it
	MetadataSubject    = "jetstream-subject"
	MetadataStream     = "jetstream-stream"
	MetadataConsumer   = "jetstream-consumer"
	MetadataSequence   = "jetstream-sequence"
	MetadataDeliveries = "jetstream-deliveries"
	MetadataTimestamp  = "jetstream-timestamp"
)

// The bodies JetStream accepts on a message's reply subject.
var (
	ackBody      = []byte("+ACK")
	nakBody      = []byte("-NAK")
	progressBody = []byte("+WPI")
)

// Delivery is one message handed to a subscriber. It must be settled exactly
// once with Ack or Nak, from any goroutine. Until then the component keeps it
// alive in JetStream (InProgress), and if the subscription ends first the
// component hands it to the next subscriber of the same consumer or gives it
// back to JetStream, so it is never lost.
type Delivery struct {
	sub   *subscription
	reply string // the JetStream ack subject
	// stream is where the message is stored, and streamCreated when that
	// stream was created, so that no reply reaches another stream made
	// since under the same name (see incarnations).
	stream        streamKey
	streamCreated time.Time
	// mark tells whether the stream was read back since NATS was last
	// away, for the instance that received the message (see answerGate).
	mark *streamMark
	// keepAliveHeld is set while a keep-alive for the message waits in
	// the answerGate.
	keepAliveHeld atomic.Bool

	Topic       string
	Data        []byte
	Metadata    map[string]string
	ContentType *string
	// Sequence is the stream sequence; Deliveries counts deliveries so far.
	Sequence   uint64
	Deliveries uint64
	// stored is when the message was stored in its stream (unix nanos),
	// 0 when JetStream did not say.
	stored int64
	// redelivered is the count of a later delivery of the same message,
	// which JetStream made while this one was held (its ack wait was
	// lowered under it): the held one stays, and counts as that delivery.
	redelivered atomic.Uint64

	// endsFirstInLine counts the subscriptions that ended with this message
	// first in line: the earliest of those they had handed on and had not
	// seen settled (see firstInLine).
	endsFirstInLine int
	// handedOn orders the messages this subscription handed to its
	// DeliverFunc, from 1; 0 until then. Guarded by sub.mu.
	handedOn uint64
	// leftBy holds the counters of the instance whose subscription ended
	// without settling the message: while the message waits on the
	// handover desk, that instance's held_messages count it.
	leftBy   *stats
	header   nats.Header  // as delivered, for a dead letter
	received time.Time    // when the component received it
	touched  atomic.Int64 // unix nanos of delivery or last InProgress
	settled  atomic.Bool
	// deadLettering is set while the message is on its way to the
	// dead-letter subject, after its last allowed delivery failed.
	deadLettering atomic.Bool
}

func newDelivery(s *subscription, msg *nats.Msg) *Delivery {
	d := &Delivery{sub: s, reply: msg.Reply, Topic: s.topic, Data: msg.Data, header: msg.Header}
	hdr := msg.Header
	md := make(map[string]string, len(hdr)+7)
	for k, v := range hdr {
		if len(v) == 0 || strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		// NATS headers keep their case: a plain NATS client may write
		// content-type. The canonical spelling wins over another.
		if strings.EqualFold(k, HeaderContentType) {
			if ct := v[0]; d.ContentType == nil || k == HeaderContentType {
				d.ContentType = &ct
			}
			continue
		}
		md[k] = v[0]
	}
	md[MetadataTopic] = msg.Subject
	md[MetadataSubject] = msg.Subject
	if id := hdr.Get(natsjs.MsgIDHeader); id != "" {
		md[MetadataMsgID] = deliveredMsgID(msg.Subject, hdr.Get(natsjs.SubjectHeader), id)
	}
	if meta, err := msg.Metadata(); err == nil {
		d.Sequence, d.Deliveries, d.stored = meta.Sequence.Stream, meta.NumDelivered, meta.Timestamp.UnixNano()
		d.stream = streamKey{conn: s.p.connKey, stream: meta.Stream}
		d.streamCreated = streamsSeen.current(d.stream)
		d.mark = s.p.answers.mark(meta.Stream)
		md[MetadataStream] = meta.Stream
		md[MetadataConsumer] = meta.Consumer
		md[MetadataSequence] = strconv.FormatUint(meta.Sequence.Stream, 10)
		md[MetadataDeliveries] = strconv.FormatUint(meta.NumDelivered, 10)
		md[MetadataTimestamp] = meta.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	d.Metadata = md
	d.received = time.Now()
	d.touched.Store(d.received.UnixNano())
	return d
}

// handedTo returns an unsettled copy of d owned by s. d itself must already
// be taken from its previous owner, so that a late Ack or Nak through the old
// copy cannot settle what the new owner now holds.
func (d *Delivery) handedTo(s *subscription) *Delivery {
	c := &Delivery{
		sub: s, reply: d.reply, stream: d.stream, streamCreated: d.streamCreated, mark: d.mark,
		Topic: d.Topic, Data: d.Data, Metadata: d.Metadata, ContentType: d.ContentType,
		Sequence: d.Sequence, Deliveries: d.Deliveries, stored: d.stored, endsFirstInLine: d.endsFirstInLine, leftBy: d.leftBy, header: d.header, received: d.received,
	}
	c.touched.Store(d.touched.Load())
	c.redelivered.Store(d.redelivered.Load())
	return c
}

// deliveries is how many deliveries JetStream counts for d's message.
func (d *Delivery) deliveries() uint64 { return max(d.Deliveries, d.redelivered.Load()) }

// Message returns the delivery as a Dapr message.
func (d *Delivery) Message() *pubsub.NewMessage {
	return &pubsub.NewMessage{Data: d.Data, Topic: d.Topic, Metadata: d.Metadata, ContentType: d.ContentType}
}

// Ack acknowledges the message: JetStream will not deliver it again.
func (d *Delivery) Ack() error { return d.Settle(nil) }

// Nak gives the message back for redelivery after the configured delay
// (the backOff step for its delivery count, or nakDelay).
func (d *Delivery) Nak() error {
	err := d.nak(d.sub.nakDelay(d.deliveries()))
	if err == nil {
		d.sub.counters.naks.Add(1)
	}
	return err
}

// Settle acks the message when handlerErr is nil and naks it otherwise. A
// failure of the last delivery that maxDeliver allows sends the message to
// the dead-letter subject instead, when there is one.
func (d *Delivery) Settle(handlerErr error) error {
	if handlerErr != nil {
		if !d.sub.ackNone() && d.sub.lastDelivery(d) {
			return d.sub.lastFailed(d, handlerErr)
		}
		return d.Nak()
	}
	if !d.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	defer d.sub.settled(d)
	d.sub.counters.acks.Add(1)
	if d.sub.ackNone() {
		return nil
	}
	// Where a consumer made again starts must know of the ack before
	// JetStream does: an admin who sees the ack floor move may delete the
	// consumer at once.
	d.sub.noteAcked(d)
	return d.answer(d.sub.p, ackBody)
}

// settleHandled settles d with what its handler returned, unless the
// handler gave up because the subscription ended (it cancelled the
// handler's context): then the app has not handled d, which stays held and
// is handed on as a message the app never saw, without using up a delivery.
func (d *Delivery) settleHandled(handlerErr error) {
	if handlerErr != nil && errors.Is(handlerErr, context.Canceled) && d.sub.ctx.Err() != nil {
		d.sub.unhand(d)
		return
	}
	_ = d.Settle(handlerErr)
}

// giveBack returns an unhandled message to JetStream at once, for any
// subscriber; reason is counted.
func (d *Delivery) giveBack(reason string) error {
	d.sub.p.stats.gaveBack(d.Topic, reason, 1)
	return d.nak(0)
}

func (d *Delivery) nak(delay time.Duration) error {
	if !d.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	defer d.sub.settled(d)
	if d.sub.ackNone() {
		return nil
	}
	return d.answer(d.sub.p, nakWithDelay(delay))
}

// take marks d settled without telling JetStream, for handing it on; false
// when it was settled already.
func (d *Delivery) take() bool { return d.settled.CompareAndSwap(false, true) }

// Settled reports whether Ack or Nak was called.
func (d *Delivery) Settled() bool { return d.settled.Load() }

// due reports whether d needs an InProgress at now: half of its ack wait has
// passed since delivery or the last keep-alive.
func (d *Delivery) due(now time.Time, ackWait time.Duration) bool {
	return !d.settled.Load() && now.UnixNano()-d.touched.Load() >= int64(ackWait/2)
}

// keepAlive tells JetStream through nc that the message is still being
// worked on, restarting its ack wait. It reports whether it sent one, or
// queued one for NATS to come back: not when one already waits for that,
// so that in_progress_total counts the keep-alives that reach JetStream.
func (d *Delivery) keepAlive(p *PubSub, now time.Time) bool {
	d.touched.Store(now.UnixNano())
	if d.keepAliveHeld.Load() {
		return false
	}
	_ = d.answer(p, progressBody)
	return true
}

// answer sends body (an ack, a nak, a keep-alive or a term) to JetStream
// for d through p, unless d's stream has been replaced by another of the
// same name: there the same ack subject would settle another message. While
// NATS is away, and after it comes back until d's stream is read back, the
// answer waits in p.answers rather than in nats.go's reconnect buffer, which
// would send it before the stream could be told apart.
func (d *Delivery) answer(p *PubSub, body []byte) error { return d.answerVia(p, body, false) }

// answerConfirmed is answer, and waits until JetStream has applied body:
// it confirms an answer that carries a reply subject once applied, and
// applies a consumer's answers in the order they come, so the answers sent
// before on the same connection are applied too. An answer held for NATS
// to come back is not confirmed.
func (d *Delivery) answerConfirmed(p *PubSub, body []byte) error { return d.answerVia(p, body, true) }

func (d *Delivery) answerVia(p *PubSub, body []byte, confirm bool) error {
	stale, first := streamsSeen.replaced(d.stream, d.streamCreated)
	if stale {
		if first {
			p.log.Warnf("stream %q was deleted and made again while messages of the old one were held; what the app does with those is not sent to JetStream, since it would settle the messages with the same sequences in the new stream",
				d.stream.stream)
		}
		return nil
	}
	nc := p.conn()
	if nc == nil {
		return ErrClosed
	}
	if !p.answers.mayAnswer(d, nc) {
		if err := p.answers.hold(d, body, nc); err != nil || !confirm {
			return err
		}
		return errors.New("NATS is not connected")
	}
	if confirm {
		_, err := nc.Request(d.reply, body, confirmTimeout)
		return err
	}
	return nc.Publish(d.reply, body)
}

func nakWithDelay(delay time.Duration) []byte {
	if delay <= 0 {
		return nakBody
	}
	return []byte(`-NAK {"delay": ` + strconv.FormatInt(delay.Nanoseconds(), 10) + `}`)
}

// deliveredMsgID is the de-duplication id the publisher gave a message
// delivered on subject, from its Nats-Msg-Id header: scoped to the topic it
// was published to, which is the subject, or for a copy a stream
// republished, the original subject (its Nats-Subject header).
func deliveredMsgID(subject, original, header string) string {
	if id, ok := scopedID(subject, header); ok || original == "" {
		return id
	}
	return unscopedMsgID(original, header)
}
