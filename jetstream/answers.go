package jetstream

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// answerGate keeps one instance's answers to JetStream (acks, naks,
// keep-alives, terms) out of nats.go's reconnect buffer while it cannot tell
// that the message's stream is still the one the message came from. nats.go
// keeps what is published while NATS is away and sends it the instant it
// reconnects, before anything here can read the stream; and when the server
// came back with its store wiped and another replica made the stream and the
// durable again, an ack subject of the old stream names the new stream's
// message at the same sequence, and would settle it unseen. So after each
// loss of the connection an answer waits until its stream's creation time
// has been read back: run reads it, then sends what waited, or drops it for
// a stream made again or gone.
type answerGate struct {
	// losses counts the times the connection to NATS was lost.
	losses atomic.Uint64
	// marks holds a *streamMark for each stream name answered for.
	marks sync.Map

	mu      sync.Mutex
	waiting []heldAnswer  // in the order they were made
	wake    chan struct{} // capacity 1: something was added to waiting
}

// streamMark is the number of connection losses when a stream's creation
// time was last read back: answers for the stream need no check until the
// next loss.
type streamMark struct {
	gate      *answerGate
	confirmed atomic.Uint64
}

// heldAnswer is an answer that waits for its stream to be read back.
type heldAnswer struct {
	d         *Delivery
	body      []byte
	keepAlive bool // body is progressBody
}

func newAnswerGate() *answerGate { return &answerGate{wake: make(chan struct{}, 1)} }

// lost records that the connection went down: from now on, answers wait
// until their stream is read back.
func (g *answerGate) lost() { g.losses.Add(1) }

// mark returns the mark of stream name, made on first use.
func (g *answerGate) mark(name string) *streamMark {
	if m, ok := g.marks.Load(name); ok {
		return m.(*streamMark)
	}
	m, _ := g.marks.LoadOrStore(name, &streamMark{gate: g})
	return m.(*streamMark)
}

// markOf returns the mark of d's stream. d keeps the one of the instance
// that received it; a message handed over to another instance's keeping
// looks up that instance's.
func (g *answerGate) markOf(d *Delivery) *streamMark {
	if m := d.mark; m != nil && m.gate == g {
		return m
	}
	return g.mark(d.stream.stream)
}

// mayAnswer reports whether an answer for d can go out on nc at once: nc is
// connected, and d's stream was read back since the connection was last
// lost. A message without JetStream metadata names no stream to read.
// This is on every answer's path, so it costs two atomic loads and nc's
// read lock.
func (g *answerGate) mayAnswer(d *Delivery, nc *nats.Conn) bool {
	if lost := g.losses.Load(); lost != 0 && d.stream.stream != "" && g.markOf(d).confirmed.Load() != lost {
		return false
	}
	return nc.IsConnected()
}

// hold keeps an answer for d until run has read its stream back. A
// keep-alive is kept once per message: through a long outage, one is made
// every half ack wait, and one restarts the ack wait as well as all of them.
// On a closed connection hold fails as publishing would.
func (g *answerGate) hold(d *Delivery, body []byte, nc *nats.Conn) error {
	if nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	keepAlive := string(body) == string(progressBody)
	if keepAlive && !d.keepAliveHeld.CompareAndSwap(false, true) {
		return nil
	}
	g.mu.Lock()
	g.waiting = append(g.waiting, heldAnswer{d: d, body: body, keepAlive: keepAlive})
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	return nil
}

// streamRead records that stream k, read when the connection had been lost
// lost times, was created at created. Unless a later stream of that name was
// seen already, answers for the stream need no check until the next loss.
func (g *answerGate) streamRead(k streamKey, created time.Time, lost uint64) {
	streamsSeen.saw(k, created)
	if created.IsZero() || !streamsSeen.current(k).Equal(created) {
		return
	}
	m := g.mark(k.stream)
	for {
		old := m.confirmed.Load()
		if old >= lost || m.confirmed.CompareAndSwap(old, lost) {
			return
		}
	}
}

// run sends or drops the answers that wait, once NATS is connected and
// their streams are read back, until p closes. Its goroutine is counted in
// p.wg.
func (g *answerGate) run(p *PubSub) {
	defer p.wg.Done()
	for {
		select {
		case <-p.closing:
			return
		case <-g.wake:
		}
		for {
			back := p.comeBack()
			if g.release(p) {
				break
			}
			if !g.await(p, back) {
				return
			}
		}
	}
}

// await waits for the next try at what could not be released: NATS
// reconnects, or retryMax passes. False when p closes.
func (g *answerGate) await(p *PubSub, back <-chan struct{}) bool {
	t := time.NewTimer(retryMax)
	defer t.Stop()
	select {
	case <-p.closing:
		return false
	case <-back:
	case <-t.C:
	}
	return true
}

// release settles what waits, round after round, for as long as each round
// settles all it took; true when nothing is left waiting. Answers held
// while a round ran are taken by the next one.
func (g *answerGate) release(p *PubSub) bool {
	for {
		nc := p.conn()
		if nc == nil || !nc.IsConnected() {
			return false
		}
		lost := g.losses.Load()
		held := g.takeAll()
		if len(held) == 0 {
			return true
		}
		if kept := g.settle(p, nc, held, lost); len(kept) > 0 {
			g.putBack(kept)
			return false
		}
	}
}

// settle reads back the stream of each answer in held, and sends the
// answers of the messages it still holds. It returns those whose stream
// could not be read, or that the connection was lost again before.
func (g *answerGate) settle(p *PubSub, nc *nats.Conn, held []heldAnswer, lost uint64) (kept []heldAnswer) {
	for _, group := range byStream(held) {
		name := group[0].d.stream.stream
		created, err := g.readBack(p, name, lost)
		switch {
		case errors.Is(err, natsjs.ErrStreamNotFound):
			p.log.Warnf("stream %q is gone since NATS was away, and its messages with it; %d answers to JetStream for them (acks, naks, keep-alives) are not sent", name, len(group))
		case err != nil:
			kept = append(kept, group...)
		default:
			kept = append(kept, g.send(p, nc, group, created, lost)...)
		}
	}
	return kept
}

// readBack returns when stream name was created, as read since the
// connection was lost for the lost-th time.
func (g *answerGate) readBack(p *PubSub, name string, lost uint64) (time.Time, error) {
	k := streamKey{conn: p.connKey, stream: name}
	if g.mark(name).confirmed.Load() == lost {
		return streamsSeen.current(k), nil
	}
	_, js, _, err := p.state()
	if err != nil {
		return time.Time{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		return time.Time{}, err
	}
	created := st.CachedInfo().Created
	g.streamRead(k, created, lost)
	return created, nil
}

// send publishes, in order, the answers of group whose messages belong to
// the stream created at created. Those of a stream made again since are
// dropped: answer then finds them stale and warns once. It stops, and
// returns the rest, when the connection is lost again.
func (g *answerGate) send(p *PubSub, nc *nats.Conn, group []heldAnswer, created time.Time, lost uint64) []heldAnswer {
	for i, a := range group {
		if g.losses.Load() != lost || !nc.IsConnected() {
			return group[i:]
		}
		if a.keepAlive {
			a.d.keepAliveHeld.Store(false)
		}
		switch {
		case created.Equal(a.d.streamCreated), a.d.streamCreated.IsZero():
			// The message's stream, or one never read before the message
			// came, which there is nothing to tell apart from.
			_ = nc.Publish(a.d.reply, a.body)
		case created.After(a.d.streamCreated):
			streamsSeen.saw(a.d.stream, created)
			_ = a.d.answer(p, a.body)
		}
		// A stream older than the message's is not the message's: nothing
		// there to settle.
	}
	return nil
}

// byStream splits held by stream name, keeping the order within each.
func byStream(held []heldAnswer) [][]heldAnswer {
	index := map[string]int{}
	var groups [][]heldAnswer
	for _, a := range held {
		i, ok := index[a.d.stream.stream]
		if !ok {
			i = len(groups)
			index[a.d.stream.stream] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], a)
	}
	return groups
}

func (g *answerGate) takeAll() []heldAnswer {
	g.mu.Lock()
	defer g.mu.Unlock()
	held := g.waiting
	g.waiting = nil
	return held
}

// putBack returns kept to the front of what waits, ahead of what was held
// since they were taken.
func (g *answerGate) putBack(kept []heldAnswer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting = append(kept, g.waiting...)
}

// drop forgets what waits, at Close, and returns how many answers that was:
// as with nats.go's reconnect buffer, they are not sent, and JetStream
// delivers their messages again once their ack wait ends.
func (g *answerGate) drop() int {
	held := g.takeAll()
	for _, a := range held {
		if a.keepAlive {
			// The message may live on in another instance's keeping
			// (the handover desk), whose keep-alives must not be skipped.
			a.d.keepAliveHeld.Store(false)
		}
	}
	return len(held)
}
