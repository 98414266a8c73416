package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// MetadataBulkPublishAtomic, in a BulkPublish request's metadata, makes that
// request one atomic batch ("true") or not ("false"), whatever the
// component's bulkPublishAtomic says.
const MetadataBulkPublishAtomic = "bulkPublishAtomic"

// bulkAtomic reports whether a BulkPublish with request metadata md is to be
// one atomic batch.
func bulkAtomic(cfg *metadata.Config, md map[string]string) (bool, error) {
	v, ok := lookupFold(md, MetadataBulkPublishAtomic)
	if !ok {
		return cfg.Publish.BulkAtomic, nil
	}
	atomic, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("%w: metadata %s = %q: use true or false", ErrInvalidRequest, MetadataBulkPublishAtomic, v)
	}
	return atomic, nil
}

// bulkPublishAtomic publishes the entries of req as one atomic batch
// (nats-server 2.12+): JetStream stores every entry or none. Whatever fails,
// every entry is reported failed, with the reason.
func (p *PubSub) bulkPublishAtomic(ctx context.Context, js natsjs.JetStream, streams *streams, req *pubsub.BulkPublishRequest) (pubsub.BulkPublishResponse, error) {
	fail := func(err error) (pubsub.BulkPublishResponse, error) {
		err = classify("bulk publish to", req.Topic, err)
		return pubsub.NewBulkPublishResponse(req.Entries, err), err
	}
	msgs := make([]*nats.Msg, len(req.Entries))
	var need needs
	for i, e := range req.Entries {
		md := entryMetadata(req, i)
		msg, n, err := p.newMsg(req.Topic, e.Event, md, e.ContentType)
		if err == nil {
			err = batchable(md)
		}
		if err == nil {
			err = fitsBatch(msg, p.maxPayload())
		}
		if err != nil {
			return failedByEntry(req, i, err)
		}
		msgs[i], need = msg, need.and(n)
	}
	if err := p.notConnected(); err != nil {
		return fail(err)
	}
	for try := 1; ; try++ {
		sent := time.Now()
		err := publishBatch(ctx, js, streams, req.Topic, need, msgs)
		if err == nil {
			p.countBatch(req.Topic, sent, len(msgs), nil)
			return pubsub.BulkPublishResponse{}, nil
		}
		// The stream went away, or no longer allows atomic publish, TTLs or
		// schedules (an operator changed it): find or set it up again.
		// JetStream dropped the batch, so nothing of it is stored.
		if (streamChanged(err) || isAPIError(err, jetstreamext.JSErrCodeBatchPublishNotEnabled)) && streams.sendAgain(ctx, req.Topic, try) {
			continue
		}
		p.countBatch(req.Topic, sent, len(msgs), err)
		if i, tooLarge := tooLargeEntry(ctx, err, streams, req.Topic, msgs); tooLarge != nil {
			return failedByEntry(req, i, tooLarge)
		}
		err = explainShutBatch(ctx, p.whileDown(err), streams, req.Topic)
		return fail(explainBatch(explainFullForBatch(ctx, err, streams, req), req, storedIn(ctx, streams, req.Topic)))
	}
}

// countBatch counts the n entries of an atomic batch, which share an outcome.
func (p *PubSub) countBatch(topic string, sent time.Time, n int, err error) {
	for range n {
		p.countPublish(topic, sent, nil, err)
	}
	if err != nil {
		p.stats.publishes(topic).bulkFailed.Add(uint64(n))
	}
}

// publishBatch makes sure the stream of topic takes msgs, and publishes them
// as one atomic batch.
func publishBatch(ctx context.Context, js natsjs.JetStream, streams *streams, topic string, need needs, msgs []*nats.Msg) error {
	lctx, done := untilLost(ctx, js.Conn())
	defer done()
	stream, err := prepare(lctx, streams, topic, need)
	if err == nil {
		err = streams.ensureAtomic(lctx, stream)
	}
	if err != nil {
		return lostConnection(ctx, lctx, err)
	}
	for _, m := range msgs {
		if isSchedule(m) {
			routeSchedule(m, stream)
		}
	}
	_, err = jetstreamext.PublishMsgBatch(lctx, js, msgs, firstAck(lctx, js))
	if endedByLoss(ctx, lctx, err) {
		return errBatchConnectionLost
	}
	return err
}

// firstAck bounds the wait for JetStream's answer to the first entry of a
// batch by the deadline of ctx: orbit.go waits for it with a timeout of its
// own (the JetStream context's default, 5 s), not with ctx, so a stream that
// never answers (an operator set no_ack on it) would hold the call past the
// deadline its caller gave it.
func firstAck(ctx context.Context, js natsjs.JetStream) jetstreamext.BatchFlowControl {
	wait := js.Options().DefaultTimeout
	if deadline, ok := ctx.Deadline(); ok {
		wait = time.Until(deadline)
	}
	return jetstreamext.BatchFlowControl{AckFirst: true, AckTimeout: max(wait, time.Millisecond)}
}

// explainShutBatch explains an atomic bulk that the topic's stream refused
// as sealed, or left unanswered, when the stream takes no publish since it
// was read (an operator sealed it, or set no_ack on it), as for a plain
// publish: the stream, the setting and the fix. The stream is forgotten, so
// that the next bulk reads it again.
func explainShutBatch(ctx context.Context, err error, s *streams, topic string) error {
	if !isAPIError(err, errCodeSealed) && !waitedForAck(err) {
		return err
	}
	return newRefusals(ctx, s, topic).shut(err)
}

// errBatchConnectionLost ends an atomic bulk whose connection to NATS
// dropped while it waited for JetStream's answer.
var errBatchConnectionLost = fmt.Errorf("%w, so the atomic bulk may be stored or not (all of it or none); with CloudEvent ids or msgId, publishing it again is refused as a duplicate if it was stored", errConnectionLost)

// batchable refuses what JetStream does not check in an atomic batch.
func batchable(md map[string]string) error {
	for _, e := range expectations(md) {
		if e.key == MetadataExpectedLastMsgID {
			return fmt.Errorf("%w: metadata %s cannot be used with %s: JetStream does not check it in an atomic batch; use %s or %s instead",
				ErrInvalidRequest, MetadataExpectedLastMsgID, MetadataBulkPublishAtomic, MetadataExpectedLastSequence, MetadataExpectedLastSubjectSequence)
		}
	}
	return nil
}

// failedByEntry fails every entry of an atomic bulk because entry bad is
// invalid: it keeps its own error, and the others name it.
func failedByEntry(req *pubsub.BulkPublishRequest, bad int, err error) (pubsub.BulkPublishResponse, error) {
	id := req.Entries[bad].EntryId
	own := invalid("publish to", req.Topic, fmt.Errorf("entry %q: %w", id, err))
	others := invalid("publish to", req.Topic, fmt.Errorf("%w: not stored, since entry %q is invalid and the bulk is atomic (%s): every entry is stored or none",
		ErrInvalidRequest, id, MetadataBulkPublishAtomic))
	resp := pubsub.BulkPublishResponse{FailedEntries: make([]pubsub.BulkPublishResponseFailedEntry, len(req.Entries))}
	for i, e := range req.Entries {
		resp.FailedEntries[i] = pubsub.BulkPublishResponseFailedEntry{EntryId: e.EntryId, Error: others}
		if i == bad {
			resp.FailedEntries[i].Error = own
		}
	}
	return resp, fmt.Errorf("atomic bulk publish to topic %q: nothing was stored: %w", req.Topic, own)
}

// explainFullForBatch explains a batch refused by a full stream: it needs
// room for all of its entries at once.
func explainFullForBatch(ctx context.Context, err error, s *streams, req *pubsub.BulkPublishRequest) error {
	if fullLimit(err) == "" {
		return err
	}
	return fmt.Errorf("%w; an atomic bulk needs room for all %d of its entries at once", newRefusals(ctx, s, req.Topic).explain(err), len(req.Entries))
}

// batchHeaderRoom is what the headers of an atomic batch add to each entry:
// its id (a 22-character nuid), its sequence (at most 4 digits) and, on the
// last entry, the commit ("1" or "eob").
const batchHeaderRoom = len(jetstreamext.BatchIDHeader) + 4 + 22 +
	len(jetstreamext.BatchSeqHeader) + 4 + 4 +
	len(jetstreamext.BatchCommitHeader) + 4 + 3

// fitsBatch checks msg, an entry of an atomic batch, against the server's
// max_payload (none when limit is 0) with the headers the batch adds to it:
// newMsg checked it without them, and nats.go would fail the batch midway
// with only "maximum payload exceeded".
func fitsBatch(msg *nats.Msg, limit int64) error {
	if limit <= 0 {
		return nil
	}
	room := int64(batchHeaderRoom)
	if len(msg.Header) == 0 {
		room += int64(len("NATS/1.0\r\n\r\n"))
	}
	size := int64(msg.Size() - len(msg.Subject))
	if size+room <= limit {
		return nil
	}
	return fmt.Errorf("%w: the entry is %d bytes (%d of data), headers included, and the atomic batch adds up to %d bytes of headers to each entry, which exceeds the server's max_payload of %d bytes; send a smaller entry, publish the bulk without %s, or raise max_payload in the nats-server configuration",
		nats.ErrMaxPayload, size, len(msg.Data), room, limit, MetadataBulkPublishAtomic)
}

// tooLargeEntry finds the entry that made JetStream end an atomic batch as
// incomplete because, with the batch's headers, it exceeds the stream's
// max_msg_size. JetStream's answer names neither the entry nor the limit,
// and says that the batch is incomplete, which publishing it again does not
// fix.
func tooLargeEntry(ctx context.Context, err error, s *streams, topic string, msgs []*nats.Msg) (int, error) {
	if !isAPIError(err, jetstreamext.JSErrCodeBatchPublishIncomplete) && !errors.Is(err, natsjs.ErrStreamMessageExceedsMaximum) {
		return 0, nil
	}
	info := s.info(ctx, topic)
	if info == nil || info.Config.MaxMsgSize <= 0 {
		return 0, nil
	}
	name, limit := info.Config.Name, info.Config.MaxMsgSize
	for i, m := range msgs {
		if size := entrySize(m); size+batchHeaderRoom > int(limit) {
			return i, fmt.Errorf("%w: the entry is %d bytes, headers included, and the atomic batch adds up to %d bytes of headers to each entry; stream %q takes messages of at most %d bytes (its max_msg_size, which streamMaxMsgSize sets when the component creates the stream); send a smaller entry, or raise the stream's limit",
				natsjs.ErrStreamMessageExceedsMaximum, size, batchHeaderRoom, name, limit)
		}
	}
	return 0, nil
}

// entrySize is the size JetStream counts against max_msg_size for m, its
// data and headers, leaving out the headers of an atomic batch.
func entrySize(m *nats.Msg) int {
	size := len(m.Data)
	if len(m.Header) == 0 {
		return size
	}
	size += len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		if strings.HasPrefix(k, "Nats-Batch-") {
			continue
		}
		for _, v := range vs {
			size += len(k) + len(": \r\n") + len(v)
		}
	}
	return size
}

// explainBatch says why JetStream refused an atomic batch, and what was
// stored: nothing, except after a timeout, when the outcome is unknown.
func explainBatch(err error, req *pubsub.BulkPublishRequest, stored func() string) error {
	n := len(req.Entries)
	var apiErr *natsjs.APIError
	switch {
	case errors.Is(err, errConnectionLost):
		return err
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishExceedsLimit:
		_, limit, _ := strings.Cut(apiErr.Description, ": ")
		return fmt.Errorf("%w: the bulk has %d entries, and nats-server takes at most %s in one atomic batch (max_batch_size in its jetstream limits); split the bulk, or publish it without %s; nothing was stored",
			err, n, orNone(limit), MetadataBulkPublishAtomic)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishDuplicateMsgID:
		return fmt.Errorf("%w: the id of an entry (its CloudEvent id, or msgId) was stored already within the stream's duplicate window, or two entries share one; every entry is stored or none, so nothing was stored (if this repeats a bulk that succeeded, that one is stored)", err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeBatchPublishIncomplete:
		return fmt.Errorf("%w: the batch did not reach nats-server whole, or waited longer than its max_batch_timeout; nothing was stored, and publishing it again is safe", err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeAtomicPublishTooManyInflight:
		return fmt.Errorf("%w: nats-server has as many atomic batches open as its max_batch_inflight limits allow; nothing was stored, and publishing it again later may succeed", err)
	case errors.As(err, &apiErr):
		return explainBatchExpectation(err, req, stored)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("%w: no answer from JetStream in time, so the bulk may be stored or not (all of it or none); with CloudEvent ids or msgId, publishing it again is refused as a duplicate if it was stored", err)
	}
	return fmt.Errorf("atomic bulk of %d entries: %w; nothing was stored", n, err)
}

// explainBatchExpectation names the entry whose expectation did not hold,
// when one entry has expectations; JetStream's answer does not say which.
func explainBatchExpectation(err error, req *pubsub.BulkPublishRequest, stored func() string) error {
	var with []int
	for i := range req.Entries {
		if len(expectations(entryMetadata(req, i))) > 0 {
			with = append(with, i)
		}
	}
	if len(with) == 1 {
		i := with[0]
		if explained := explainExpectation(err, req.Topic, entryMetadata(req, i), stored); explained != err {
			return fmt.Errorf("entry %q (JetStream checks it after the entries before it in the bulk): %w", req.Entries[i].EntryId, explained)
		}
	}
	return fmt.Errorf("atomic bulk of %d entries: %w; nothing was stored", len(req.Entries), err)
}

func isAPIError(err error, code natsjs.ErrorCode) bool {
	if err == nil {
		return false // before apiErr, which escapes: a publish that succeeded allocates nothing here
	}
	var apiErr *natsjs.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == code
}
