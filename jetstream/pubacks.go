package jetstream

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// pubAcks takes the answers to the asynchronous publishes of one JetStream
// context from nats.go's handlers, and hands each to the call that sent the
// message. A PubAckFuture makes two channels for each message, and takes
// the context's lock to make each and to read it; here a call waits on one
// channel for all its messages, and each message costs a map entry.
type pubAcks struct {
	mu      sync.Mutex
	waiting map[*nats.Msg]pubSlot
}

// pubSlot is where the answer to a message goes: entry i of call.
type pubSlot struct {
	call *pubCall
	i    int
}

func newPubAcks() *pubAcks {
	return &pubAcks{waiting: map[*nats.Msg]pubSlot{}}
}

// options are the JetStream options that send the answers here.
func (a *pubAcks) options() []natsjs.JetStreamOpt {
	return []natsjs.JetStreamOpt{
		natsjs.WithPublishAsyncAckHandler(func(_ natsjs.JetStream, m *nats.Msg, ack *natsjs.PubAck) { a.answer(m, ack, nil) }),
		natsjs.WithPublishAsyncErrHandler(func(_ natsjs.JetStream, m *nats.Msg, err error) { a.answer(m, nil, err) }),
	}
}

// answer records the answer to m for the call that sent it, if that call
// still waits for it. nats.go calls it on its own goroutine, at times while
// it holds its publisher's lock: it must neither block nor call nats.go.
func (a *pubAcks) answer(m *nats.Msg, ack *natsjs.PubAck, err error) {
	a.mu.Lock()
	slot, ok := a.waiting[m]
	if !ok {
		a.mu.Unlock()
		return
	}
	delete(a.waiting, m)
	c := slot.call
	e := &c.entries[slot.i]
	e.ack, e.err, e.answered = ack, err, true
	c.left--
	wake := slot.i == c.want || (c.want == waitForAll && c.left == 0)
	a.mu.Unlock()
	if wake {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// waitForAll, as pubCall.want, wakes the call once every answer is in.
const waitForAll = -1

// pubCall is one Publish or BulkPublish: the messages it sent and their
// answers, by entry.
type pubCall struct {
	acks    *pubAcks
	entries []pubEntry
	one     [1]pubEntry // the entries of a single publish
	left    int         // entries sent and not answered
	want    int         // the entry the call waits for, or waitForAll
	wake    chan struct{}
}

// pubEntry is one message of a call.
type pubEntry struct {
	msg      *nats.Msg
	ack      *natsjs.PubAck
	err      error
	sent     bool
	answered bool
}

// newCall starts a call of n messages; end must follow.
func (a *pubAcks) newCall(n int) *pubCall {
	c := &pubCall{acks: a, want: waitForAll - 1, wake: make(chan struct{}, 1)}
	if n == 1 {
		c.entries = c.one[:]
	} else {
		c.entries = make([]pubEntry, n)
	}
	return c
}

// send publishes msg as entry i, unless ctx is done already: a publish
// reported as cancelled must not be stored, or a retry of a payload without
// an id would store it twice.
func (c *pubCall) send(ctx context.Context, js natsjs.JetStream, i int, msg *nats.Msg) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("not sent: %w", err)
	}
	a := c.acks
	// Before the publish: its answer may come before PublishMsgAsync returns.
	a.mu.Lock()
	a.waiting[msg] = pubSlot{call: c, i: i}
	c.entries[i] = pubEntry{msg: msg, sent: true}
	c.left++
	a.mu.Unlock()
	if _, err := js.PublishMsgAsync(msg); err != nil {
		a.mu.Lock()
		if slot, ok := a.waiting[msg]; ok && slot.call == c {
			delete(a.waiting, msg)
			c.entries[i].sent = false
			c.left--
		}
		a.mu.Unlock()
		return err
	}
	return nil
}

// await waits for the answer to entry i until ctx is done, and returns it.
func (c *pubCall) await(ctx context.Context, nc *nats.Conn, i int) (*natsjs.PubAck, error) {
	c.waitFor(ctx, i)
	return c.result(ctx, nc, i)
}

// awaitAll waits until every entry sent is answered, or ctx is done.
func (c *pubCall) awaitAll(ctx context.Context) {
	c.waitFor(ctx, waitForAll)
}

// waitFor waits for the answer to entry i (every answer, for waitForAll),
// or for ctx to be done.
func (c *pubCall) waitFor(ctx context.Context, i int) {
	a := c.acks
	for {
		a.mu.Lock()
		in := (i == waitForAll && c.left == 0) || (i != waitForAll && c.entries[i].answered)
		c.want = i
		a.mu.Unlock()
		if in || ctx.Err() != nil {
			return
		}
		select {
		case <-c.wake:
		case <-ctx.Done():
		}
	}
}

// result is the answer to entry i, sent by this call. An answer that is in
// when ctx is done counts: a stored message reported as failed would be
// stored again by a retry. A publish still unanswered while the connection
// to nc is down may wait in nats.go's reconnect buffer, which sends it once
// NATS is back: its error says that it may be stored.
func (c *pubCall) result(ctx context.Context, nc *nats.Conn, i int) (*natsjs.PubAck, error) {
	a := c.acks
	a.mu.Lock()
	e := c.entries[i]
	a.mu.Unlock()
	switch {
	case e.answered && e.err != nil:
		return nil, lostAfterSent(e.err)
	case e.answered:
		return e.ack, nil
	case !nc.IsConnected():
		return nil, fmt.Errorf("waiting for the JetStream acknowledgement: %w; the connection to NATS was lost, and the message may still be sent once NATS is back, so it may be stored or not; publishing it again with the same CloudEvent id or msgId stores it once", ctx.Err())
	}
	return nil, fmt.Errorf("%w: %w", errAckOverdue, ctx.Err())
}

// end stops waiting for the answers not in yet: nats.go still delivers
// them, and they are dropped.
func (c *pubCall) end() {
	a := c.acks
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range c.entries {
		if !e.sent || e.answered {
			continue
		}
		if slot, ok := a.waiting[e.msg]; ok && slot.call == c {
			delete(a.waiting, e.msg)
		}
	}
}
