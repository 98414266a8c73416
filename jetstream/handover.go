package jetstream

import (
	"crypto/sha256"
	"encoding/hex"
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
	// maxHandovers is how many subscriptions in a row may end with the same
	// message unsettled before it goes back to JetStream as a failed
	// delivery: a message that makes daprd crash must reach maxDeliver.
	maxHandovers = 3
	// handoverTick paces keep-alives and expiry of waiting messages.
	handoverTick = time.Second
)

// handoverKey names a JetStream consumer as seen through one NATS account.
type handoverKey struct{ conn, stream, consumer string }

// waiting is a message handed over by an ended subscription.
type waiting struct {
	d       *Delivery // taken from its old owner; sub is nil
	since   time.Time
	ackWait time.Duration
	ackNone bool
	// statsConsumer is the consumer label of the subscription that left d:
	// its keep-alives count there, in the stats of the instance sending them.
	statsConsumer string
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
	ticking bool
	quit    chan struct{} // stops the ticker once nothing waits
}

// desk is the process's handover desk: daprd restarts and re-Inits create
// new PubSub instances, and the messages must outlive the old ones.
var desk = &handoverDesk{waiting: map[handoverKey][]waiting{}, keepers: map[string]map[*PubSub]struct{}{}}

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
// account, nobody could take or settle the waiting messages any more: they
// go back to JetStream through p, before its connection closes.
func (h *handoverDesk) unregister(p *PubSub) {
	h.mu.Lock()
	delete(h.keepers[p.connKey], p)
	var orphans []waiting
	if len(h.keepers[p.connKey]) == 0 {
		delete(h.keepers, p.connKey)
		for k, ws := range h.waiting {
			if k.conn == p.connKey {
				orphans = append(orphans, ws...)
				delete(h.waiting, k)
			}
		}
	}
	h.stopIfIdleLocked()
	h.mu.Unlock()
	for _, w := range orphans {
		w.giveBack(p, GivenBackShutdown)
	}
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

// leave hands ds, taken from an ended subscription, to the desk.
func (h *handoverDesk) leave(k handoverKey, ds []*Delivery, ackWait time.Duration, ackNone bool, statsConsumer string, p *PubSub) {
	now := time.Now()
	var back []waiting
	h.mu.Lock()
	for _, d := range ds {
		w := waiting{d: d.handedTo(nil), since: now, ackWait: ackWait, ackNone: ackNone, statsConsumer: statsConsumer}
		w.d.handovers++
		if w.d.handovers > maxHandovers {
			back = append(back, w)
			continue
		}
		h.waiting[k] = append(h.waiting[k], w)
	}
	var quit chan struct{}
	if !h.ticking && len(h.waiting) > 0 {
		h.ticking, h.quit = true, make(chan struct{})
		quit = h.quit
	}
	h.mu.Unlock()
	for _, w := range back {
		p.log.Warnf("message %d of stream %q was handed over %d times by subscriptions that ended without settling it; giving it back to JetStream", w.d.Sequence, k.stream, maxHandovers)
		w.giveBack(p, GivenBackStreamEnd)
	}
	if quit != nil {
		go h.tick(quit)
	}
}

// take returns the messages waiting for consumer k, oldest first.
func (h *handoverDesk) take(k handoverKey) []*Delivery {
	h.mu.Lock()
	ws := h.waiting[k]
	delete(h.waiting, k)
	h.stopIfIdleLocked()
	h.mu.Unlock()
	out := make([]*Delivery, len(ws))
	for i, w := range ws {
		out[i] = w.d
	}
	return out
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
	h.mu.Lock()
	for k, ws := range h.waiting {
		keeper := h.anyKeeper(k.conn)
		kept := ws[:0]
		for _, w := range ws {
			switch {
			case now.Sub(w.since) >= handoverTimeout:
				jobs = append(jobs, job{w, keeper, true})
			case !w.ackNone && w.d.due(now, w.ackWait):
				jobs = append(jobs, job{w, keeper, false})
				kept = append(kept, w)
			default:
				kept = append(kept, w)
			}
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
	for _, j := range jobs {
		if j.keeper == nil {
			continue
		}
		if j.expire {
			j.keeper.log.Warnf("message %d of stream %q waited %s for a subscriber after its subscription ended; giving it back to JetStream", j.w.d.Sequence, j.w.d.Metadata[MetadataStream], handoverTimeout)
			j.w.giveBack(j.keeper, GivenBackStreamEnd)
		} else {
			j.w.d.keepAlive(j.keeper, now)
			j.keeper.stats.subscription(j.w.d.Topic, j.w.statsConsumer).inProgress.Add(1)
		}
	}
	return more
}

func (h *handoverDesk) anyKeeper(conn string) *PubSub {
	for p := range h.keepers[conn] {
		return p
	}
	return nil
}

func (w waiting) giveBack(p *PubSub, reason string) {
	p.stats.gaveBack(w.d.Topic, reason, 1)
	if !w.ackNone {
		_ = p.reply(w.d.reply, nakBody)
	}
}
