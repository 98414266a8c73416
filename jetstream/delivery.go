package jetstream

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go/jetstream"
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

// Delivery is one message handed to a subscriber. It must be settled exactly
// once with Ack or Nak, from any goroutine. Until then the component keeps it
// alive in JetStream (InProgress), and if the subscription ends first the
// component gives it back to JetStream, so it is never lost.
type Delivery struct {
	sub *subscription
	msg jetstream.Msg

	Topic       string
	Data        []byte
	Metadata    map[string]string
	ContentType *string
	// Sequence is the stream sequence; Deliveries counts deliveries so far.
	Sequence   uint64
	Deliveries uint64

	touched atomic.Int64 // unix nanos of delivery or last InProgress
	settled atomic.Bool
}

func newDelivery(s *subscription, msg jetstream.Msg) *Delivery {
	d := &Delivery{sub: s, msg: msg, Topic: s.topic, Data: msg.Data()}
	hdr := msg.Headers()
	md := make(map[string]string, len(hdr)+7)
	for k, v := range hdr {
		if len(v) == 0 || strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		if k == HeaderContentType {
			ct := v[0]
			d.ContentType = &ct
			continue
		}
		md[k] = v[0]
	}
	md[MetadataTopic] = msg.Subject()
	md[MetadataSubject] = msg.Subject()
	if id := hdr.Get(jetstream.MsgIDHeader); id != "" {
		md[MetadataMsgID] = id
	}
	if meta, err := msg.Metadata(); err == nil {
		d.Sequence, d.Deliveries = meta.Sequence.Stream, meta.NumDelivered
		md[MetadataStream] = meta.Stream
		md[MetadataConsumer] = meta.Consumer
		md[MetadataSequence] = strconv.FormatUint(meta.Sequence.Stream, 10)
		md[MetadataDeliveries] = strconv.FormatUint(meta.NumDelivered, 10)
		md[MetadataTimestamp] = meta.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	d.Metadata = md
	d.touched.Store(time.Now().UnixNano())
	return d
}

// Message returns the delivery as a Dapr message.
func (d *Delivery) Message() *pubsub.NewMessage {
	return &pubsub.NewMessage{Data: d.Data, Topic: d.Topic, Metadata: d.Metadata, ContentType: d.ContentType}
}

// Ack acknowledges the message: JetStream will not deliver it again.
func (d *Delivery) Ack() error { return d.Settle(nil) }

// Nak gives the message back for redelivery after the configured delay
// (the backOff step for its delivery count, or nakDelay).
func (d *Delivery) Nak() error { return d.nak(d.sub.nakDelay(d.Deliveries)) }

// Settle acks the message when handlerErr is nil and naks it otherwise.
func (d *Delivery) Settle(handlerErr error) error {
	if handlerErr != nil {
		return d.Nak()
	}
	if !d.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	defer d.sub.untrack(d)
	if d.sub.cons.AckPolicy == jetstream.AckNonePolicy {
		return nil
	}
	return d.msg.Ack()
}

// giveBack returns an unhandled message to JetStream for another subscriber.
func (d *Delivery) giveBack() error { return d.nak(giveBackDelay) }

func (d *Delivery) nak(delay time.Duration) error {
	if !d.settled.CompareAndSwap(false, true) {
		return ErrAlreadySettled
	}
	defer d.sub.untrack(d)
	if d.sub.cons.AckPolicy == jetstream.AckNonePolicy {
		return nil
	}
	if delay > 0 {
		return d.msg.NakWithDelay(delay)
	}
	return d.msg.Nak()
}

// Settled reports whether Ack or Nak was called.
func (d *Delivery) Settled() bool { return d.settled.Load() }

// keepAlive tells JetStream the message is still being worked on, once half
// of the ack wait has passed since delivery or the last keep-alive.
func (d *Delivery) keepAlive(now time.Time, after time.Duration) {
	if d.settled.Load() || now.UnixNano()-d.touched.Load() < int64(after) {
		return
	}
	d.touched.Store(now.UnixNano())
	_ = d.msg.InProgress()
}
