package jetstream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// Metadata keys with a meaning to this component; they are not copied into
// NATS headers.
const (
	// MetadataMsgID sets the de-duplication id. It is stored scoped to the
	// topic, as Nats-Msg-Id <topic>:<id> (see scopedMsgID), and deliveries
	// report the id alone under the same key.
	MetadataMsgID = "msgId"
	// MetadataCloudEventID is Dapr's CloudEvent id override; used as the
	// de-duplication id of raw payloads.
	MetadataCloudEventID = "cloudevent.id"
	// HeaderContentType carries the content type of a message.
	HeaderContentType = "Content-Type"
)

// Publish stores one message. Each call waits for its own acknowledgement,
// but concurrent calls share the connection's asynchronous publish pipeline.
func (p *PubSub) Publish(ctx context.Context, req *pubsub.PublishRequest) (err error) {
	pub, err := p.publishState()
	if err != nil {
		return err
	}
	defer pub.calls.done()
	js, streams := pub.js, pub.streams
	var ack *natsjs.PubAck
	var sent time.Time
	defer func() { p.countPublish(req.Topic, sent, ack, err) }()
	asked := time.Now()
	contentType := ""
	if req.ContentType != nil {
		contentType = *req.ContentType
	}
	msg, need, err := p.newMsg(req.Topic, req.Data, req.Metadata, contentType)
	if err != nil {
		return invalid("publish to", req.Topic, err)
	}
	if err := p.notConnected(); err != nil {
		return classify("publish to", req.Topic, err)
	}
	for try := 1; ; try++ {
		stream, err := prepareUntilLost(ctx, js.Conn(), streams, req.Topic, need)
		if err != nil {
			return classify("publish to", req.Topic, p.whileDown(p.explainDenied("publish to", req.Topic, err, asked)))
		}
		if need.schedule {
			routeSchedule(msg, stream)
		}
		sent = time.Now()
		ack, err = publishOne(ctx, js, pub.acks, msg)
		if err == nil {
			return nil
		}
		if streamChanged(err) && streams.sendAgain(ctx, req.Topic, try) {
			continue
		}
		if denied := p.denied("publish to", req.Topic, err, asked); denied != nil {
			return denied
		}
		err = explainExpectation(err, req.Topic, req.Metadata, storedIn(ctx, streams, req.Topic))
		err = newRefusals(ctx, streams, req.Topic).explain(err)
		return classify("publish to", req.Topic, p.whileDown(err))
	}
}

// storedIn returns a function naming the stream that stores topic now, for
// error messages.
func storedIn(ctx context.Context, s *streams, topic string) func() string {
	return func() string {
		// The publish may have ended for want of time: the look-up gets its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), apiTimeout)
		defer cancel()
		if info := s.info(ctx, topic); info != nil {
			return info.Config.Name
		}
		return "unknown"
	}
}

// notConnected returns why calls cannot reach NATS now, or nil while it is
// connected. Without a connection, a request would only wait for its
// deadline and then report a timeout that names neither NATS nor its URL.
func (p *PubSub) notConnected() error {
	p.mu.Lock()
	conns := p.conns
	p.mu.Unlock()
	if conns == nil {
		return nil
	}
	return conns.notConnected()
}

// whileDown adds to err, from a call to NATS, that the connection is down,
// when it is: that is then the likely reason, not the timeout or the
// "connection disconnected" the call reports.
func (p *PubSub) whileDown(err error) error {
	if !mayBeDown(err) {
		return err
	}
	return withDown(err, p.notConnected())
}

// mayBeDown reports whether a lost connection may explain err.
func mayBeDown(err error) bool {
	return err != nil && !errors.Is(err, ErrNotConnected) && classifyKind(err) == KindUnavailable
}

// withDown adds down, the reason from notConnected, to err.
func withDown(err, down error) error {
	if down == nil {
		return err
	}
	return fmt.Errorf("%w; %w", err, down)
}

// needs is what a publish asks of its stream besides storing the topic.
type needs struct {
	ttl      bool      // a per-message TTL
	schedule bool      // a delayed message
	until    time.Time // when the latest delayed message reaches its topic
}

// and is what n and o need together.
func (n needs) and(o needs) needs {
	until := n.until
	if o.until.After(until) {
		until = o.until
	}
	return needs{ttl: n.ttl || o.ttl, schedule: n.schedule || o.schedule, until: until}
}

// prepare makes sure a stream stores topic and accepts what the publish
// needs, and returns its name. What is known of the topic's stream is read
// again once when it fails the publish: an operator may have deleted the
// stream since, or fixed what kept it from taking a publish.
func prepare(ctx context.Context, s *streams, topic string, need needs) (string, error) {
	name, err := prepareKnown(ctx, s, topic, need)
	if errors.Is(err, natsjs.ErrStreamNotFound) || errors.Is(err, ErrStreamTakesNoPublish) {
		s.forget(topic)
		name, err = prepareKnown(ctx, s, topic, need)
	}
	return name, err
}

// errConnectionLost ends a call whose connection to NATS dropped while it
// waited for an answer: no server answers a request on the connection made
// since, and nats.go would wait for the deadline.
var errConnectionLost = errors.New("the connection to NATS was lost before JetStream answered")

// untilLost returns ctx, cancelled with errConnectionLost once nc loses its
// connection; done stops watching.
func untilLost(ctx context.Context, nc *nats.Conn) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	ch := nc.StatusChanged(nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case _, ok := <-ch:
			if ok {
				cancel(errConnectionLost)
			}
		case <-ctx.Done():
		}
	}()
	if !nc.IsConnected() {
		cancel(errConnectionLost)
	}
	return ctx, func() {
		nc.RemoveStatusListener(ch)
		cancel(nil)
		<-exited
	}
}

// lostConnection returns errConnectionLost for err, the outcome of a call
// made with lctx from untilLost, when the lost connection ended it rather
// than ctx.
func lostConnection(ctx, lctx context.Context, err error) error {
	if endedByLoss(ctx, lctx, err) {
		return errConnectionLost
	}
	return err
}

// endedByLoss reports whether the lost connection, not ctx, ended the call
// made with lctx, from untilLost, that failed with err.
func endedByLoss(ctx, lctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && errors.Is(context.Cause(lctx), errConnectionLost)
}

// prepareUntilLost is prepare, ended as soon as the connection to NATS is
// lost.
func prepareUntilLost(ctx context.Context, nc *nats.Conn, s *streams, topic string, need needs) (string, error) {
	if !s.asksNATS(topic, need) {
		return prepare(ctx, s, topic, need)
	}
	pctx, done := untilLost(ctx, nc)
	defer done()
	name, err := prepare(pctx, s, topic, need)
	return name, lostConnection(ctx, pctx, err)
}

// asksNATS reports whether prepare sends a request for a publish to topic
// that needs need: not once the topic's stream and what the publish needs of
// it are known, as for every publish after the first but delayed ones.
func (s *streams) asksNATS(topic string, need needs) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	name, ok := s.knownLocked(topic)
	return !ok || need.schedule || (need.ttl && !s.ttl[name])
}

// prepareKnown is prepare, with what is known of the topic's stream.
func prepareKnown(ctx context.Context, s *streams, topic string, need needs) (string, error) {
	name, err := s.ensure(ctx, topic)
	if err == nil {
		err = s.publishable(topic, name)
	}
	if err != nil {
		return "", err
	}
	if need.ttl {
		if err := s.ensureTTL(ctx, name); err != nil {
			return "", err
		}
	}
	if need.schedule {
		if err := s.ensureSchedules(ctx, name, need.until); err != nil {
			return "", err
		}
	}
	return name, nil
}

// publishOne sends msg and waits for its answer until ctx is done.
func publishOne(ctx context.Context, js natsjs.JetStream, acks *pubAcks, msg *nats.Msg) (*natsjs.PubAck, error) {
	call := acks.newCall(1)
	defer call.end()
	if err := call.send(ctx, js, 0, msg); err != nil {
		return nil, err
	}
	return call.await(ctx, js.Conn(), 0)
}

// errAckOverdue ends a publish that was sent and got no answer before its
// context was done, on a connection that stayed up: JetStream may have
// stored it (its answer was late, or lost), or not (no stream answered).
// refusals.unanswered tells which it can.
var errAckOverdue = errors.New("waiting for the JetStream acknowledgement")

// lostAfterSent explains nats.ErrDisconnected from the answer to a publish:
// nats.go fails every publish still waiting for its acknowledgement when the
// connection drops, also one that JetStream stored and whose
// acknowledgement was lost with the connection.
func lostAfterSent(err error) error {
	if !errors.Is(err, nats.ErrDisconnected) {
		return err
	}
	return fmt.Errorf("%w: the connection to NATS was lost before JetStream acknowledged the message, so it may be stored or not; publishing it again with the same CloudEvent id or msgId stores it once, and an expected* check would then fail against it", err)
}

func isNoStream(err error) bool {
	return errors.Is(err, natsjs.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// JetStream's codes for refusals of what a publish needed of its stream, and
// was found to have before.
const (
	errCodeMsgTTLDisabled        natsjs.ErrorCode = 10166
	errCodeMsgSchedulesDisabled  natsjs.ErrorCode = 10188
	errCodeScheduleTargetInvalid natsjs.ErrorCode = 10190
)

// streamChanged reports whether err says that the stream a publish was sent
// to is not as it was when it was looked up: it went away, no longer allows
// per-message TTLs or schedules (an operator replaced it), or no longer
// holds the topic a schedule targets (an operator moved the topic to
// another stream). Looking the stream up again, once, finds or sets up
// what the publish needs, or says what is missing.
func streamChanged(err error) bool {
	return isNoStream(err) || errors.Is(err, natsjs.ErrStreamNotFound) || isAPIError(err, errCodeMsgTTLDisabled) ||
		isAPIError(err, errCodeMsgSchedulesDisabled) || isAPIError(err, errCodeScheduleTargetInvalid)
}

// newMsg builds the NATS message for one Dapr publish: headers from the
// metadata, the de-duplication id, the TTL and the schedule. It reports what
// the message needs of its stream.
func (p *PubSub) newMsg(topic string, data []byte, md map[string]string, contentType string) (*nats.Msg, needs, error) {
	if err := metadata.ValidSubject(topic, false); err != nil {
		return nil, needs{}, fmt.Errorf("%w: topic %s; use a NATS subject such as orders or orders.created", ErrInvalidRequest, err)
	}
	limit := p.maxPayload()
	if limit > 0 && int64(len(data)) > limit {
		return nil, needs{}, fmt.Errorf("%w: message of %d bytes exceeds the server's max_payload of %d bytes", nats.ErrMaxPayload, len(data), limit)
	}
	msg := &nats.Msg{Subject: topic, Data: data, Header: make(nats.Header, len(md)+2)}
	if err := setHeaders(msg, md); err != nil {
		return nil, needs{}, err
	}
	if contentType != "" {
		msg.Header.Set(HeaderContentType, contentType)
	}
	ce, isCE := readCloudEvent(data)
	if isCE {
		setTraceContext(msg, ce, md)
	}
	if id := msgID(ce, isCE, md); id != "" {
		if err := validMsgID(id, ce, isCE, md); err != nil {
			return nil, needs{}, err
		}
		// Scoped to the topic, the id also keeps apart a dead letter from its
		// original in the same stream: daprd publishes a failed message to
		// its dead-letter topic with the delivery's data and metadata, so
		// with the original's id.
		msg.Header.Set(natsjs.MsgIDHeader, scopedMsgID(topic, id))
	}
	var need needs
	var err error
	if need.ttl, err = setTTL(msg, md); err != nil {
		return nil, needs{}, err
	}
	if need.until, err = setScheduleFromMetadata(msg, md); err != nil {
		return nil, needs{}, err
	}
	need.schedule = !need.until.IsZero()
	if err := fitsMaxPayload(msg, limit); err != nil {
		return nil, needs{}, err
	}
	return msg, need, nil
}

// validMsgID refuses a de-duplication id that a NATS header cannot carry as
// it is: nats.go trims spaces and tabs at the end of a header value and
// turns line breaks into spaces, so "a " would be stored as the id of "a",
// and a different message with it dropped as a duplicate.
func validMsgID(id string, ce cloudEvent, isCE bool, md map[string]string) error {
	if !strings.ContainsAny(id, "\r\n") && !strings.HasSuffix(id, " ") && !strings.HasSuffix(id, "\t") {
		return nil
	}
	source := "metadata " + MetadataCloudEventID
	switch {
	case metadataFold(md, MetadataMsgID) != "":
		source = "metadata " + MetadataMsgID
	case isCE && ce.ID != "":
		source = "the CloudEvent id"
	}
	return fmt.Errorf("%w: %s %q cannot be a de-duplication id: a NATS header drops spaces and tabs at its end and turns line breaks into spaces, so it would be taken for another id and the message dropped as a duplicate; use an id without line breaks and without spaces at its end",
		ErrInvalidRequest, source, id)
}

// setHeaders copies the publish metadata into the headers of msg, except
// the keys meant for Dapr or this component; expectations become the
// headers JetStream checks them by.
func setHeaders(msg *nats.Msg, md map[string]string) error {
	for k, v := range md {
		if key := expectationKey(k); key != "" {
			if err := setExpectation(msg, msg.Subject, key, v); err != nil {
				return err
			}
			continue
		}
		if strings.EqualFold(k, MetadataMsgID) && strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("%w: metadata %s = %q has a line break, which a NATS header cannot carry (nats.go would store another id): use an id without one", ErrInvalidRequest, MetadataMsgID, v)
		}
		if reservedKey(k) {
			continue
		}
		if err := validHeader(k, v); err != nil {
			return err
		}
		msg.Header.Set(k, v)
	}
	return nil
}

// setTTL sets the per-message TTL that ttlInSeconds asks for, and reports
// whether there is one.
func setTTL(msg *nats.Msg, md map[string]string) (bool, error) {
	if len(md) == 0 {
		return false, nil
	}
	ttl, ok, err := contribmd.TryGetTTL(md)
	if !ok && err == nil {
		return false, nil
	}
	key := contribmd.TTLInSecondsMetadataKey
	raw, given := lookupFold(md, key)
	if !given {
		key = contribmd.TTLMetadataKey
		raw, _ = lookupFold(md, key)
	}
	// A count of seconds too large for a duration wraps around in Dapr's
	// parser, to a shorter TTL.
	if n, perr := strconv.ParseInt(strings.TrimSpace(raw), 10, 64); perr == nil && n > maxTTLSeconds {
		err = strconv.ErrRange
	}
	if err != nil || ttl < time.Second {
		return false, fmt.Errorf("%w: metadata %s = %q: use a whole number of seconds from 1 to %d, or a duration such as 30s or 24h",
			ErrInvalidRequest, key, raw, maxTTLSeconds)
	}
	msg.Header.Set(natsjs.MsgTTLHeader, strconv.FormatInt(int64(ttl/time.Second), 10)+"s")
	return true, nil
}

// maxTTLSeconds is the longest TTL a duration holds, in seconds.
const maxTTLSeconds = math.MaxInt64 / int64(time.Second)

// setScheduleFromMetadata delays msg as the metadata asks, and returns
// until when; the zero time when it does not.
func setScheduleFromMetadata(msg *nats.Msg, md map[string]string) (time.Time, error) {
	at, err := scheduledFor(md, time.Now())
	if err != nil || at.IsZero() {
		return time.Time{}, err
	}
	if e := expectations(md); len(e) > 0 {
		return time.Time{}, fmt.Errorf("%w: metadata %s cannot be combined with %s: JetStream checks an expectation when it stores the schedule, not when the message reaches the topic, so the check cannot guard that append; publish without a delay to append on a condition",
			ErrInvalidRequest, scheduleKey(md), e[0].key)
	}
	setSchedule(msg, at)
	return at, nil
}

// fitsMaxPayload checks msg, headers included, against the server's
// max_payload (none when limit is 0); nats.go would only say "maximum
// payload exceeded".
func fitsMaxPayload(msg *nats.Msg, limit int64) error {
	if limit <= 0 {
		return nil
	}
	if size := int64(msg.Size() - len(msg.Subject)); size > limit {
		return fmt.Errorf("%w: message of %d bytes (%d of data, %d of headers) exceeds the server's max_payload of %d bytes",
			nats.ErrMaxPayload, size, len(msg.Data), size-int64(len(msg.Data)), limit)
	}
	return nil
}

func (p *PubSub) maxPayload() int64 {
	p.mu.Lock()
	nc := p.nc
	p.mu.Unlock()
	if nc == nil {
		return 0
	}
	return nc.MaxPayload()
}

// reservedKey reports metadata keys that are instructions to Dapr or to this
// component, or that would be read by NATS itself, rather than user headers.
func reservedKey(k string) bool {
	switch strings.ToLower(k) {
	case "ttlinseconds", "ttl", "rawpayload", "msgid", "content-type", "contenttype":
		return true
	}
	if isScheduleKey(k) || strings.EqualFold(k, MetadataBulkPublishAtomic) {
		return true
	}
	l := strings.ToLower(k)
	return strings.HasPrefix(l, "cloudevent.") || strings.HasPrefix(l, "nats-")
}

func validHeader(k, v string) error {
	if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r == ':' || r >= 0x7f }) {
		return fmt.Errorf("%w: metadata key %q cannot be a NATS header name: use printable ASCII without spaces or colons", ErrInvalidRequest, k)
	}
	if strings.ContainsAny(v, "\r\n") {
		return fmt.Errorf("%w: metadata %q has a line break in its value, which a NATS header cannot carry", ErrInvalidRequest, k)
	}
	return nil
}

// Trace context headers, named as W3C Trace Context names them.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// setTraceContext copies a CloudEvent's trace context into the NATS headers
// traceparent and tracestate, unless the publish metadata set a traceparent
// of its own (which is copied as a header like any other key).
func setTraceContext(msg *nats.Msg, ce cloudEvent, md map[string]string) {
	if ce.TraceParent == "" {
		return
	}
	for k := range md {
		if strings.EqualFold(k, HeaderTraceParent) {
			return
		}
	}
	msg.Header[HeaderTraceParent] = []string{ce.TraceParent}
	if ce.TraceState != "" {
		msg.Header[HeaderTraceState] = []string{ce.TraceState}
	}
}

// scopedMsgID is the Nats-Msg-Id of a message published to topic with the
// de-duplication id id: "<topic>:<id>". JetStream de-duplicates across a
// whole stream, while an id only stands for retries of one publish: with the
// topic in front, the same event published to two topics of one stream is
// stored on both, and only a publish again to the same topic within the
// stream's duplicate window is dropped. A topic may hold ":" too, and so
// would make the header ambiguous (orders with id eu:1, orders:eu with id 1):
// its ":" and "%" are escaped, as %3A and %25, so that the header's first ":"
// always ends the topic. The header counts against max_payload, which newMsg
// checks after adding it.
func scopedMsgID(topic, id string) string { return msgIDScope(topic) + ":" + id }

// msgIDScope is topic as it starts a Nats-Msg-Id; most topics have neither
// ":" nor "%", and stay as they are.
func msgIDScope(topic string) string {
	if !strings.ContainsAny(topic, ":%") {
		return topic
	}
	return msgIDEscaper.Replace(topic)
}

var msgIDEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// unscopedMsgID returns the de-duplication id that the publisher gave, from
// the Nats-Msg-Id header of a message stored on subject: see scopedID. A
// header without the subject's scope, as set by other NATS publishers, is
// returned as it is.
func unscopedMsgID(subject, header string) string {
	id, _ := scopedID(subject, header)
	return id
}

// scopedID returns what follows "<scope>:" in header, the Nats-Msg-Id of a
// message stored on subject, and whether the header has that scope. A stored
// message's subject is the topic it was published to, also when it is
// delivered through a wildcard subscription. Headers written before a topic's
// ":" was escaped may still be stored, so the topic as it is counts too.
func scopedID(subject, header string) (string, bool) {
	if id, ok := cutScope(header, subject); ok {
		return id, true
	}
	if scope := msgIDScope(subject); scope != subject {
		if id, ok := cutScope(header, scope); ok {
			return id, true
		}
	}
	return header, false
}

// cutScope returns what follows "<scope>:" in header, if anything does.
func cutScope(header, scope string) (string, bool) {
	n := len(scope)
	if len(header) > n+1 && header[n] == ':' && header[:n] == scope {
		return header[n+1:], true
	}
	return "", false
}
