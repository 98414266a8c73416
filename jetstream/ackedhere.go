package jetstream

import "time"

// ackedRemembered bounds how many acknowledged messages a subscription
// remembers, in under 3 MiB. JetStream loses the acks that went
// into a connection that broke before the client noticed, and those a
// server had not yet written when it was killed (it writes a consumer's
// state ten times a second); it delivers those messages again once their
// ack wait has passed. Meanwhile the subscription goes on acknowledging:
// this covers 30 s, the default ack wait, at about 2,000 messages a
// second per subscription.
const ackedRemembered = 1 << 16

// ackedHere remembers the messages of one stream that a subscription
// acknowledged most recently, by sequence, with the time each was stored,
// so that a redelivery of one of them is known for a message the app
// handled. The stored time tells the message apart from another at the
// same sequence of a stream made again under the same name.
type ackedHere struct {
	stream streamKey
	stored map[uint64]int64 // sequence -> unix nanos the message was stored
	order  []uint64         // a ring of sequences, oldest at next once full
	next   int
}

// add records that the app handled d and d was acknowledged.
func (a *ackedHere) add(d *Delivery) {
	if d.stored == 0 || d.Sequence == 0 {
		return
	}
	if a.stored == nil || d.stream != a.stream {
		*a = ackedHere{stream: d.stream, stored: make(map[uint64]int64)}
	}
	if _, known := a.stored[d.Sequence]; !known {
		a.push(d.Sequence)
	}
	a.stored[d.Sequence] = d.stored
}

func (a *ackedHere) push(seq uint64) {
	if len(a.order) < ackedRemembered {
		a.order = append(a.order, seq)
		return
	}
	delete(a.stored, a.order[a.next])
	a.order[a.next] = seq
	a.next = (a.next + 1) % ackedRemembered
}

// has reports whether d delivers again a message acknowledged here.
func (a *ackedHere) has(d *Delivery) bool {
	if d.stored == 0 || d.stream != a.stream {
		return false
	}
	stored, ok := a.stored[d.Sequence]
	return ok && stored == d.stored
}

// forget drops what is remembered of d's message. JetStream delivers it
// for the first time again when the consumer started over (an operator
// reset it, or deleted it and made it again to replay): that replay is for
// the app, and so is a redelivery after the app fails it.
func (a *ackedHere) forget(d *Delivery) {
	if len(a.stored) > 0 && d.stream == a.stream {
		delete(a.stored, d.Sequence)
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
