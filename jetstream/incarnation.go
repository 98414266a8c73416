package jetstream

import (
	"sync"
	"time"
)

// streamKey names a stream as seen through one NATS account.
type streamKey struct{ conn, stream string }

// incarnations records, for each stream this process reads, when the stream
// it reads now was created. An operator may delete a stream and add another
// under the same name while messages of the old one are held. An ack subject
// names only the stream, the consumer and the stream sequence, so an Ack, a
// Nak or an InProgress for such a message would act on the new stream's
// message with the same sequence, on a durable made again under the same
// name: an ack there loses a message the app never saw.
type incarnations struct {
	mu     sync.Mutex
	latest map[streamKey]time.Time
	warned map[streamKey]time.Time // the incarnation a stale reply was last logged for
}

var streamsSeen = &incarnations{latest: map[streamKey]time.Time{}, warned: map[streamKey]time.Time{}}

// saw records that stream k was created at created, if that is later than
// what was known.
func (in *incarnations) saw(k streamKey, created time.Time) {
	if created.IsZero() {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if created.After(in.latest[k]) {
		in.latest[k] = created
	}
}

// current is when the stream named by k, as last seen, was created; zero
// when it was never seen.
func (in *incarnations) current(k streamKey) time.Time {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.latest[k]
}

// replaced reports whether a message of stream k as created at created
// belongs to a stream that has since been replaced, and whether this is the
// first such report for the stream that replaced it.
func (in *incarnations) replaced(k streamKey, created time.Time) (stale, first bool) {
	if created.IsZero() {
		return false, false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.latest[k]
	if !now.After(created) {
		return false, false
	}
	first = !in.warned[k].Equal(now)
	in.warned[k] = now
	return true, first
}
