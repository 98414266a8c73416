package jetstream

import (
	"sort"
	"time"
)

// ackedRemembered bounds how many acknowledged messages a subscription
// remembers, in at most 1.25 MiB. JetStream loses the acks that went into
// a connection that broke before the client noticed, and those a server
// had not yet written when it was killed (it writes a consumer's state ten
// times a second); it delivers those messages again once their ack wait
// has passed. Meanwhile the subscription goes on acknowledging: this
// covers 30 s, the default ack wait, at about 2,000 messages a second per
// subscription.
const ackedRemembered = 1 << 16

// ackedSpace is the room kept for them: the window of remembered entries
// moves up through it and is copied back down once it reaches the end.
const ackedSpace = ackedRemembered + ackedRemembered/4

// ackedEntry is a message acknowledged here: its stream sequence, and
// when it was stored (unix nanos), 0 once forgotten.
type ackedEntry struct {
	seq    uint64
	stored int64
}

// ackedHere remembers the messages of one stream that a subscription
// acknowledged, the highest sequences at most ackedRemembered of them,
// so that a redelivery of one of them is known for a message the app
// handled. The stored time tells the message apart from another at the
// same sequence of a stream made again under the same name.
type ackedHere struct {
	stream streamKey
	// entries[from:] are the remembered ones, by sequence, lowest first.
	// Acks mostly come in sequence order, so most are appended.
	entries []ackedEntry
	from    int
}

func (a *ackedHere) live() []ackedEntry { return a.entries[a.from:] }

// find returns where seq is, or would be, among the live entries, and
// whether it is there.
func (a *ackedHere) find(seq uint64) (int, bool) {
	live := a.live()
	i := len(live)
	if i == 0 || live[i-1].seq < seq {
		return i, false
	}
	i = sort.Search(len(live), func(k int) bool { return live[k].seq >= seq })
	return i, i < len(live) && live[i].seq == seq
}

// add records that the app handled d and d was acknowledged.
func (a *ackedHere) add(d *Delivery) {
	if d.stored == 0 || d.Sequence == 0 {
		return
	}
	if d.stream != a.stream {
		*a = ackedHere{stream: d.stream}
	}
	i, known := a.find(d.Sequence)
	if known {
		a.live()[i].stored = d.stored
		return
	}
	if len(a.live()) == ackedRemembered {
		if i == 0 {
			return // below everything remembered
		}
		a.from++ // the lowest goes
		i--
	}
	a.makeRoom()
	a.entries = append(a.entries, ackedEntry{})
	live := a.live()
	copy(live[i+1:], live[i:len(live)-1])
	live[i] = ackedEntry{seq: d.Sequence, stored: d.stored}
}

// makeRoom makes sure one more entry fits without a new array once the
// entries fill ackedSpace: the live ones move down to its start.
func (a *ackedHere) makeRoom() {
	if len(a.entries) < cap(a.entries) {
		return
	}
	if a.from > 0 {
		n := copy(a.entries, a.live())
		a.entries, a.from = a.entries[:n], 0
		return
	}
	grown := make([]ackedEntry, len(a.entries), min(max(2*cap(a.entries), 64), ackedSpace))
	copy(grown, a.entries)
	a.entries = grown
}

// has reports whether d delivers again a message acknowledged here.
func (a *ackedHere) has(d *Delivery) bool {
	if d.stored == 0 || d.stream != a.stream {
		return false
	}
	i, known := a.find(d.Sequence)
	return known && a.live()[i].stored == d.stored
}

// forget drops what is remembered of d's message. JetStream delivers it
// for the first time again when the consumer started over (an operator
// reset it, or deleted it and made it again to replay): that replay is for
// the app, and so is a redelivery after the app fails it.
func (a *ackedHere) forget(d *Delivery) {
	if d.stream != a.stream {
		return
	}
	if i, known := a.find(d.Sequence); known {
		a.live()[i].stored = 0
	}
}

// ackAgain acknowledges d, a redelivery of a message that the app handled
// here and whose ack JetStream lost, instead of handing it to the app
// twice.
func (s *subscription) ackAgain(d *Delivery) {
	d.take()
	s.counters.ackedAgain.Add(1)
	if err := d.answer(s.p, ackBody); err != nil {
		s.log.Debugf("topic %q: acknowledging again the message at sequence %d of stream %q: %v", s.topic, d.Sequence, d.stream.stream, err)
	}
	s.noteAckedAgain()
	s.pullIfRoom()
}

// noteAckedAgain logs the messages acknowledged again, at most every
// reportEvery.
func (s *subscription) noteAckedAgain() {
	s.mu.Lock()
	s.ackedAgain++
	n, now := s.ackedAgain, time.Now()
	if now.Sub(s.ackedAgainLogged) < reportEvery {
		s.mu.Unlock()
		return
	}
	s.ackedAgain, s.ackedAgainLogged = 0, now
	s.mu.Unlock()
	s.log.Infof("topic %q: JetStream delivered again %d messages that the app had handled and this subscription had acknowledged: it lost the acks (the connection to NATS broke before the client noticed, or a server stopped before it stored them). They were acknowledged again, not handed to the app twice",
		s.topic, n)
}
