package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// BulkPublish publishes all entries through the asynchronous pipeline and
// waits for every acknowledgement. Entries that failed are reported one by one;
// the error is non-nil whenever any entry failed.
func (p *PubSub) BulkPublish(ctx context.Context, req *pubsub.BulkPublishRequest) (pubsub.BulkPublishResponse, error) {
	pub, err := p.publishState()
	if err != nil {
		return pubsub.NewBulkPublishResponse(req.Entries, err), err
	}
	defer pub.calls.done()
	cfg, js, streams := pub.cfg, pub.js, pub.streams
	if len(req.Entries) == 0 {
		return pubsub.BulkPublishResponse{}, nil
	}
	atomic, err := bulkAtomic(cfg, req.Metadata)
	if err != nil {
		err = invalid("bulk publish to", req.Topic, err)
		return pubsub.NewBulkPublishResponse(req.Entries, err), err
	}
	if atomic {
		return p.bulkPublishAtomic(ctx, js, streams, req)
	}
	b, need := p.newBulkEntries(req)
	b.asked = time.Now()
	pending := b.pending()
	if len(pending) > 0 {
		if err := p.notConnected(); err != nil {
			// Each entry fails with the reason, so that none is taken for
			// stored; invalid entries keep their own error.
			b.fail(pending, classify("publish to", req.Topic, err))
			pending = nil
		}
	}
	// With no valid entry (an invalid topic, say) there is no stream to look
	// up, and each entry keeps its own error.
	var stream string
	for len(pending) > 0 {
		if stream, err = prepareUntilLost(ctx, js.Conn(), streams, req.Topic, need); err == nil {
			break
		}
		if b.refuseNeeding(pending, err) {
			// The stream cannot take what some entries need (a delay, a
			// TTL): those fail, named, and the others are stored as they
			// would be on their own.
			pending, need = b.stillPending()
			continue
		}
		err = classify("bulk publish to", req.Topic, p.whileDown(p.explainDenied("bulk publish to", req.Topic, err, b.asked)))
		return pubsub.NewBulkPublishResponse(req.Entries, err), err
	}
	defer p.countBulk(b)
	// The stream changed under us: find or set it up again.
	for try, again := 1, b.send(ctx, js, pub.acks, stream, pending); len(again) > 0 && streams.sendAgain(ctx, req.Topic, try); try++ {
		if stream, err = prepare(ctx, streams, req.Topic, need); err != nil {
			b.fail(again, classify("publish to", req.Topic, p.whileDown(err)))
			break
		}
		again = b.send(ctx, js, pub.acks, stream, again)
	}
	return p.bulkResponse(ctx, streams, b)
}

// bulkEntries is a BulkPublish that is not atomic, entry by entry: the
// message, and the acknowledgement or why the entry failed.
type bulkEntries struct {
	req    *pubsub.BulkPublishRequest
	msgs   []*nats.Msg // nil for an entry that is not valid
	needs  []needs     // what each entry needs of its stream
	acks   []*natsjs.PubAck
	failed []error
	asked  time.Time // when the call began
	sent   time.Time // when entries were last sent
}

// newBulkEntries builds the message of each entry of req; an entry that is
// not valid fails at once. It reports what the entries need of their stream.
func (p *PubSub) newBulkEntries(req *pubsub.BulkPublishRequest) (*bulkEntries, needs) {
	b := &bulkEntries{
		req:    req,
		msgs:   make([]*nats.Msg, len(req.Entries)),
		needs:  make([]needs, len(req.Entries)),
		acks:   make([]*natsjs.PubAck, len(req.Entries)),
		failed: make([]error, len(req.Entries)),
	}
	var need needs
	for i, e := range req.Entries {
		msg, n, err := p.newMsg(req.Topic, e.Event, entryMetadata(req, i), e.ContentType)
		if err != nil {
			b.failed[i] = invalid("publish to", req.Topic, fmt.Errorf("entry %q: %w", e.EntryId, err))
			continue
		}
		b.msgs[i], b.needs[i] = msg, n
		need = need.and(n)
	}
	return b, need
}

// pending lists the entries that have a message to send.
func (b *bulkEntries) pending() []int {
	idx := make([]int, 0, len(b.msgs))
	for i, m := range b.msgs {
		if m != nil {
			idx = append(idx, i)
		}
	}
	return idx
}

// refuseNeeding fails the entries of pending that need what err, from
// preparing their stream, says the stream cannot take (per-message TTL or
// message schedules), each naming itself, and reports whether any did.
func (b *bulkEntries) refuseNeeding(pending []int, err error) bool {
	ttl, schedule := errors.Is(err, ErrTTLNotAllowed), errors.Is(err, ErrSchedulesNotAllowed)
	refused := false
	for _, i := range pending {
		if (ttl && b.needs[i].ttl) || (schedule && b.needs[i].schedule) {
			b.failed[i] = classify("publish to", b.req.Topic, fmt.Errorf("entry %q: %w", b.req.Entries[i].EntryId, err))
			refused = true
		}
	}
	return refused
}

// stillPending lists the entries that have a message to send and have not
// failed, and what they need of their stream.
func (b *bulkEntries) stillPending() ([]int, needs) {
	var need needs
	idx := make([]int, 0, len(b.msgs))
	for i, m := range b.msgs {
		if m != nil && b.failed[i] == nil {
			idx = append(idx, i)
			need = need.and(b.needs[i])
		}
	}
	return idx, need
}

// fail fails the entries idx with err.
func (b *bulkEntries) fail(idx []int, err error) {
	for _, i := range idx {
		b.failed[i] = err
	}
}

// send publishes the entries idx to stream and waits for their
// acknowledgements. It returns the entries whose stream changed (see
// streamChanged).
func (b *bulkEntries) send(ctx context.Context, js natsjs.JetStream, acks *pubAcks, stream string, idx []int) []int {
	call := acks.newCall(len(b.msgs))
	defer call.end()
	b.sent = time.Now()
	nc := js.Conn()
	awaited := 0 // the entries of idx whose answers were awaited
	for k, i := range idx {
		// Below the pipeline's limit, by waiting for this bulk's earliest
		// answers: nats.go holds a publish back at the limit, and lets it
		// go when the connection drops, into its reconnect buffer, which
		// sends it once NATS is back, after this call reported it failed.
		for awaited < k && js.PublishAsyncPending() >= maxPendingPublishes {
			if i := idx[awaited]; b.failed[i] == nil {
				b.acks[i], b.failed[i] = call.await(ctx, nc, i)
			}
			awaited++
		}
		if isSchedule(b.msgs[i]) {
			routeSchedule(b.msgs[i], stream)
		}
		// Nor is a publish sent while the connection is down: it would
		// wait in that buffer too.
		if !nc.IsConnected() {
			b.failed[i] = fmt.Errorf("not sent: %w", nats.ErrDisconnected)
			continue
		}
		b.failed[i] = call.send(ctx, js, i, b.msgs[i])
	}
	call.awaitAll(ctx)
	for _, i := range idx[awaited:] {
		if b.failed[i] == nil {
			b.acks[i], b.failed[i] = call.result(ctx, nc, i)
		}
	}
	var again []int
	for _, i := range idx {
		if streamChanged(b.failed[i]) {
			again = append(again, i)
		}
	}
	return again
}

// countBulk counts each entry's publish, and the entries that failed.
func (p *PubSub) countBulk(b *bulkEntries) {
	for i := range b.req.Entries {
		p.countPublish(b.req.Topic, b.sent, b.acks[i], b.failed[i])
		if b.failed[i] != nil {
			p.stats.publishes(b.req.Topic).bulkFailed.Add(1)
		}
	}
}

// bulkResponse reports each entry that failed, with why, explained.
func (p *PubSub) bulkResponse(ctx context.Context, streams *streams, b *bulkEntries) (pubsub.BulkPublishResponse, error) {
	req := b.req
	var resp pubsub.BulkPublishResponse
	// Why NATS is down, looked up once for the first entry it may explain.
	var down error
	looked := false
	refused := newRefusals(ctx, streams, req.Topic)
	for i, err := range b.failed {
		if err == nil {
			continue
		}
		if denied := p.denied("publish to", req.Topic, err, b.asked); denied != nil {
			resp.FailedEntries = append(resp.FailedEntries, pubsub.BulkPublishResponseFailedEntry{EntryId: req.Entries[i].EntryId, Error: denied})
			continue
		}
		if mayBeDown(err) {
			if !looked {
				down, looked = p.notConnected(), true
			}
			err = withDown(err, down)
		}
		err = explainExpectation(err, req.Topic, entryMetadata(req, i), storedIn(ctx, streams, req.Topic))
		err = refused.explain(err)
		resp.FailedEntries = append(resp.FailedEntries, pubsub.BulkPublishResponseFailedEntry{
			EntryId: req.Entries[i].EntryId,
			Error:   classify("publish to", req.Topic, err),
		})
	}
	if n := len(resp.FailedEntries); n > 0 {
		return resp, fmt.Errorf("bulk publish to topic %q: %d of %d entries failed; first: %w", req.Topic, n, len(req.Entries), resp.FailedEntries[0].Error)
	}
	return resp, nil
}

// entryMetadata is the request's metadata with entry i's own on top. Keys
// are read in any case, so a request key that the entry sets in another
// case ("msgId" and "msgid") is left out: the entry's own value wins.
func entryMetadata(req *pubsub.BulkPublishRequest, i int) map[string]string {
	e := req.Entries[i]
	if len(e.Metadata) == 0 {
		return req.Metadata
	}
	md := make(map[string]string, len(req.Metadata)+len(e.Metadata))
	for k, v := range req.Metadata {
		if _, own := lookupFold(e.Metadata, k); !own {
			md[k] = v
		}
	}
	for k, v := range e.Metadata {
		md[k] = v
	}
	return md
}
