package jetstream

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// handoverTimeout bounds how long a message that a subscription held
	// when it ended waits for the next subscription of the same consumer:
	// long enough for daprd to restart or for a Component to be initialised
	// again, short enough that another replica gets it soon if nobody comes.
	handoverTimeout = 30 * time.Second
	// maxEndsFirstInLine is how many subscriptions may end with the same
	// message first in line (see firstInLine) before it goes back to
	// JetStream as a failed delivery: a message that makes daprd crash must
	// reach maxDeliver rather than crash every daprd that gets it.
	maxEndsFirstInLine = 3
	// handoverTick paces keep-alives and expiry of waiting messages.
	handoverTick = time.Second
)

// handoverKey names a JetStream consumer as seen through one NATS account.
type handoverKey struct{ conn, stream, consumer string }

// handoverTerms are what the desk needs to know of the consumer whose
// messages wait.
type handoverTerms struct {
	ackWait    time.Duration
	ackNone    bool
	maxDeliver int // the consumer's; 0 or less: no limit
	// created is when JetStream created the consumer: an instance that
	// reaches the account another way (another spelling of the URL,
	// rotated credentials) and sees this very consumer can keep them.
	created time.Time
	// statsConsumer is the consumer label of the subscription that left the
	// messages: their keep-alives count there, in the stats of the instance
	// sending them.
	statsConsumer string
}

// waiting is a message handed over by an ended subscription.
type waiting struct {
	d     *Delivery // taken from its old owner; sub is nil
	since time.Time
	handoverTerms
	// warned is set once the log said why d waits past handoverTimeout.
	warned bool
}

// outlasts reports whether w waits past handoverTimeout: giving it back
// would lose it. JetStream delivers a message on its last allowed delivery
// no more, and a message without acks is not delivered again at all.
func (w waiting) outlasts() bool {
	return w.ackNone || (w.maxDeliver > 0 && w.d.deliveries() >= uint64(w.maxDeliver))
}

// handoverDesk keeps the messages that ended subscriptions held and had not
// settled, and hands them to the next subscription of the same consumer in
// this process. JetStream counts giving a message back as a delivery, so with
// a low maxDeliver a message that no app ever saw would be lost; here it stays
// ack-pending (kept alive with InProgress) and reaches the next subscriber
// ahead of anything new. A message nobody takes within handoverTimeout goes
// back to JetStream. Any instance connected to the same account can settle a
// waiting message, since an ack is a publish to its reply subject; so one
// instance can be replaced by another (re-Init) without losing them.
type handoverDesk struct {
	mu      sync.Mutex
	waiting map[handoverKey][]waiting
	keepers map[string]map[*PubSub]struct{} // by connection key
	// pins are the pins kept for the waiting messages of pinned consumers
	// (see pinLease).
	pins    map[handoverKey]*pinLease
	ticking bool
	quit    chan struct{} // stops the ticker once nothing waits
}

// desk is the process's handover desk: daprd restarts and re-Inits create
// new PubSub instances, and the messages must outlive the old ones.
var desk = newHandoverDesk()

func newHandoverDesk() *handoverDesk {
	return &handoverDesk{waiting: map[handoverKey][]waiting{}, keepers: map[string]map[*PubSub]struct{}{}, pins: map[handoverKey]*pinLease{}}
}

// connKey identifies the NATS account an instance talks to, without keeping
// its secrets in memory in the clear.
func connKey(c metadata.Connection) string {
	h := sha256.New()
	for _, f := range []string{c.URL, c.Token, c.User, c.Password, c.JWT, c.SeedKey, c.NKeySeed, c.CredsFile, c.TLSClientCert, c.Domain, c.APIPrefix} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (h *handoverDesk) register(p *PubSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.keepers[p.connKey] == nil {
		h.keepers[p.connKey] = map[*PubSub]struct{}{}
	}
	h.keepers[p.connKey][p] = struct{}{}
}

// unregister removes p as a keeper. When p was the last instance on its
// connection key, the waiting messages go to an instance that reaches the
// same consumer another way (a Component initialised again with another
// natsURL or credentials for the same account); when there is none, nobody
// could take or settle them any more, and they go back to JetStream through
// p, before its connection closes.
func (h *handoverDesk) unregister(p *PubSub) {
	h.mu.Lock()
	delete(h.keepers[p.connKey], p)
	orphaned := map[handoverKey][]waiting{}
	pins := map[handoverKey]*pinLease{}
	var others []*PubSub
	if len(h.keepers[p.connKey]) == 0 {
		delete(h.keepers, p.connKey)
		for k, ws := range h.waiting {
			if k.conn == p.connKey {
				orphaned[k] = ws
				delete(h.waiting, k)
			}
		}
		for k, l := range h.pins {
			if k.conn == p.connKey {
				pins[k] = l
				delete(h.pins, k)
			}
		}
		for conn := range h.keepers {
			others = append(others, h.anyKeeper(conn))
		}
	}
	h.stopIfIdleLocked()
	h.mu.Unlock()
	lost := 0
	for k, ws := range orphaned {
		if h.adopt(k, ws, pins[k], others) {
			continue
		}
		ds := make([]*Delivery, 0, len(ws))
		for _, w := range ws {
			if w.outlasts() {
				lost++
			}
			if l := pins[k]; l != nil && !w.ackNone {
				ds = append(ds, w.d)
				continue
			}
			w.giveBack(p, GivenBackShutdown)
		}
		if l := pins[k]; l != nil {
			l.timer.Stop()
			p.release(l, ds, GivenBackShutdown)
		}
	}
	if lost > 0 {
		p.log.Warnf("%d messages that waited for a subscriber were given back as the last instance on their connection closed, although JetStream will not deliver them again: with ackPolicy none they are lost; those on their last allowed delivery JetStream announces to the next subscription of their consumer, which dead-letters them (deadLetterSubject) or logs them", lost)
	}
}

// adopt moves ws, waiting for consumer k, to the first of others that sees
// the same consumer; false when none does.
func (h *handoverDesk) adopt(k handoverKey, ws []waiting, pin *pinLease, others []*PubSub) bool {
	for _, q := range others {
		if !q.seesConsumer(k.stream, k.consumer, ws[0].created) {
			continue
		}
		to := handoverKey{conn: q.connKey, stream: k.stream, consumer: k.consumer}
		h.mu.Lock()
		_, keeps := h.keepers[q.connKey][q]
		if keeps {
			h.waiting[to] = append(h.waiting[to], ws...)
			if pin != nil {
				h.pins[to] = pin
			}
		}
		quit := h.startTickingLocked()
		h.mu.Unlock()
		if quit != nil {
			go h.tick(quit)
		}
		if keeps {
			q.log.Infof("%d messages of consumer %q on stream %q wait here for the next subscriber, left by an instance that reached NATS another way", len(ws), k.consumer, k.stream)
			return true
		}
	}
	return false
}

// waitsOnlyOn reports whether messages wait for a consumer on p's account
// and p is the only instance that can keep them.
func (h *handoverDesk) waitsOnlyOn(p *PubSub) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keepers[p.connKey]) > 1 {
		return false
	}
	for k := range h.waiting {
		if k.conn == p.connKey {
			return true
		}
	}
	return false
}

// leave hands ds, taken from an ended subscription, to the desk, with the
// pin that subscription kept for them, if any.
func (h *handoverDesk) leave(k handoverKey, ds []*Delivery, terms handoverTerms, pin *pinLease, p *PubSub) {
	now := time.Now()
	var back []waiting
	h.mu.Lock()
	if pin != nil {
		if old := h.pins[k]; old != nil {
			old.timer.Stop()
		}
		h.pins[k] = pin
		pin.timer = time.AfterFunc(time.Until(pin.deadline), func() { h.releasePin(pin) })
	}
	for _, d := range ds {
		w := waiting{d: d.handedTo(nil), since: now, handoverTerms: terms}
		if w.d.endsFirstInLine > maxEndsFirstInLine {
			back = append(back, w)
			continue
		}
		h.waiting[k] = append(h.waiting[k], w)
	}
	quit := h.startTickingLocked()
	h.mu.Unlock()
	for _, w := range back {
		p.log.Warnf("message %d of stream %q was the first one daprd had not answered when %d subscriptions ended, as a message that makes daprd crash would be; giving it back to JetStream as a failed delivery", w.d.Sequence, k.stream, w.d.endsFirstInLine)
		w.giveBack(p, GivenBackStreamEnd)
	}
	if quit != nil {
		go h.tick(quit)
	}
}

// take returns the messages waiting for consumer k, oldest first, and the
// pin kept for them, if any.
func (h *handoverDesk) take(k handoverKey) ([]*Delivery, *pinLease) {
	h.mu.Lock()
	ws := h.waiting[k]
	delete(h.waiting, k)
	pin := h.pins[k]
	delete(h.pins, k)
	if pin != nil {
		pin.timer.Stop()
	}
	h.stopIfIdleLocked()
	h.mu.Unlock()
	out := make([]*Delivery, len(ws))
	for i, w := range ws {
		out[i] = w.d
	}
	return out, pin
}

// releasePin gives back what waits under pin at its deadline, when no
// subscription took it, and then gives up the pin. What JetStream would
// not deliver again keeps waiting: the pin cannot be kept past pinnedTTL.
func (h *handoverDesk) releasePin(pin *pinLease) {
	h.mu.Lock()
	var k handoverKey
	found := false
	for key, l := range h.pins {
		if l == pin {
			k, found = key, true
		}
	}
	if !found {
		h.mu.Unlock()
		return // taken, or let go as its instance closed
	}
	delete(h.pins, k)
	keeper := h.anyKeeper(k.conn)
	var back []*Delivery
	kept := h.waiting[k][:0]
	for _, w := range h.waiting[k] {
		if w.outlasts() {
			kept = append(kept, w)
		} else {
			back = append(back, w.d)
		}
	}
	if len(kept) == 0 {
		delete(h.waiting, k)
	} else {
		h.waiting[k] = kept
	}
	h.stopIfIdleLocked()
	h.mu.Unlock()
	if keeper == nil {
		return
	}
	if len(back) > 0 {
		keeper.log.Warnf("topic %q: %s of consumer %q on stream %q waited for a subscriber after their pinned subscription ended; giving them back to JetStream before the pin ends, so that the replica pinned next gets them first",
			pin.topic, plural(int64(len(back)), "message"), k.consumer, k.stream)
	}
	keeper.release(pin, back, GivenBackStreamEnd)
}

// tick keeps waiting messages alive and gives back those nobody took in
// time. It runs while anything waits.
func (h *handoverDesk) tick(quit <-chan struct{}) {
	t := time.NewTicker(handoverTick)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			if !h.sweep(now) {
				return
			}
		case <-quit:
			return
		}
	}
}

// startTickingLocked returns the quit channel of a ticker to start when
// messages wait and none runs, or nil. h.mu is held.
func (h *handoverDesk) startTickingLocked() chan struct{} {
	if h.ticking || len(h.waiting) == 0 {
		return nil
	}
	h.ticking, h.quit = true, make(chan struct{})
	return h.quit
}

// stopIfIdleLocked stops the ticker when nothing waits. h.mu is held.
func (h *handoverDesk) stopIfIdleLocked() {
	if h.ticking && len(h.waiting) == 0 {
		close(h.quit)
		h.ticking, h.quit = false, nil
	}
}

func (h *handoverDesk) sweep(now time.Time) bool {
	type job struct {
		w      waiting
		keeper *PubSub
		expire bool
	}
	var jobs []job
	stayed := map[handoverKey]*outlasting{}
	h.mu.Lock()
	for k, ws := range h.waiting {
		keeper := h.anyKeeper(k.conn)
		kept := ws[:0]
		for _, w := range ws {
			// A kept pin gives its messages back itself, before unpinning.
			late := now.Sub(w.since) >= handoverTimeout && h.pins[k] == nil
			switch {
			case late && !w.outlasts():
				jobs = append(jobs, job{w: w, keeper: keeper, expire: true})
				continue
			case late && !w.warned:
				w.warned = true
				stayed[k] = stayed[k].add(w, keeper)
			}
			if !w.ackNone && w.d.due(now, w.ackWait) {
				jobs = append(jobs, job{w: w, keeper: keeper})
			}
			kept = append(kept, w)
		}
		if len(kept) == 0 {
			delete(h.waiting, k)
		} else {
			h.waiting[k] = kept
		}
	}
	more := len(h.waiting) > 0
	h.stopIfIdleLocked()
	h.mu.Unlock()
	for k, o := range stayed {
		o.log(k)
	}
	for _, j := range jobs {
		switch {
		case j.keeper == nil:
		case j.expire:
			j.keeper.log.Warnf("message %d of stream %q waited %s for a subscriber after its subscription ended; giving it back to JetStream", j.w.d.Sequence, j.w.d.Metadata[MetadataStream], handoverTimeout)
			j.w.giveBack(j.keeper, GivenBackStreamEnd)
		default:
			if j.w.d.keepAlive(j.keeper, now) {
				j.keeper.stats.subscription(j.w.d.Topic, j.w.statsConsumer).inProgress.Add(1)
			}
		}
	}
	return more
}

// outlasting counts the messages of one consumer that passed handoverTimeout
// and keep waiting (see waiting.outlasts), for one log line.
type outlasting struct {
	n      int
	first  waiting
	keeper *PubSub
}

func (o *outlasting) add(w waiting, keeper *PubSub) *outlasting {
	if o == nil {
		o = &outlasting{first: w, keeper: keeper}
	}
	o.n++
	return o
}

func (o *outlasting) log(k handoverKey) {
	if o.keeper == nil {
		return
	}
	o.keeper.log.Warnf("%d messages of consumer %q on stream %q (from sequence %d) have waited %s for a subscriber after their subscription ended; they keep waiting here for the next one, since JetStream would not deliver them again (%s)",
		o.n, k.consumer, k.stream, o.first.d.Sequence, handoverTimeout, o.first.why())
}

func (h *handoverDesk) anyKeeper(conn string) *PubSub {
	for p := range h.keepers[conn] {
		return p
	}
	return nil
}

// why says why w outlasts handoverTimeout.
func (w waiting) why() string {
	if w.ackNone {
		return "ackPolicy none"
	}
	return fmt.Sprintf("delivery %d of maxDeliver %d", w.d.deliveries(), w.maxDeliver)
}

func (w waiting) giveBack(p *PubSub, reason string) {
	p.stats.gaveBack(w.d.Topic, reason, 1)
	if !w.ackNone {
		_ = w.d.answer(p, nakBody)
	}
}
