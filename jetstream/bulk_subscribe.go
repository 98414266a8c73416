package jetstream

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/dapr/components-contrib/pubsub"
)

// Defaults of a bulk subscription when the request leaves them unset.
const (
	defaultBulkMaxMessages = 100
	defaultBulkMaxAwait    = time.Second
)

var errStopped = errors.New("subscription stopped")

// pausedBatchRecheck is how often a batch that is due while paused checks
// for Resume.
const pausedBatchRecheck = 100 * time.Millisecond

// pausedBatchGiveBackCheck is how often a batch looks whether it has been
// paused for handoverTimeout.
const pausedBatchGiveBackCheck = time.Second

// BulkSubscribe implements pubsub.BulkSubscriber: messages are handed to the
// handler in batches of up to MaxMessagesCount, or whatever arrived within
// MaxAwaitDurationMs of the first. Each entry is acked or naked by its own
// status; a handler error without statuses naks the whole batch.
func (p *PubSub) BulkSubscribe(ctx context.Context, req pubsub.SubscribeRequest, handler pubsub.BulkHandler) error {
	maxN := req.BulkSubscribeConfig.MaxMessagesCount
	if maxN <= 0 {
		maxN = defaultBulkMaxMessages
	}
	maxWait := time.Duration(req.BulkSubscribeConfig.MaxAwaitDurationMs) * time.Millisecond
	if maxWait <= 0 {
		maxWait = defaultBulkMaxAwait
	}
	in := make(chan *Delivery)
	_, err := p.subscribe(ctx, req, func(d *Delivery) error {
		select {
		case in <- d:
			return nil
		case <-d.sub.ctx.Done():
			return errStopped
		}
	}, func(s *subscription) {
		s.work.Add(1)
		// A batch can hold no more than the subscription may hold: a
		// larger one would wait out maxWait with the window full.
		go s.batch(in, min(maxN, s.consumerCfg.MaxInFlight), maxWait, req.Metadata, handler)
	}, true)
	return err
}

func (s *subscription) batch(in <-chan *Delivery, maxN int, maxWait time.Duration, md map[string]string, handler pubsub.BulkHandler) {
	defer s.work.Done()
	batch := make([]*Delivery, 0, maxN)
	timer := time.NewTimer(maxWait)
	timer.Stop()
	defer timer.Stop()
	// Looks for a pause long enough that what waits in the batch goes back.
	pauseCheck := time.NewTicker(pausedBatchGiveBackCheck)
	defer pauseCheck.Stop()
	flush := func() {
		timer.Stop()
		// A batch that fills as the subscription stops is not handed to
		// the app: the select below may pick it over ctx.Done.
		if len(batch) > 0 && s.ctx.Err() == nil {
			s.handleBatch(batch, md, handler)
			batch = batch[:0]
		}
	}
	for {
		// A full batch takes no more: it waits for Resume below.
		limit := s.batchLimit(maxN)
		next := in
		if len(batch) >= limit {
			next = nil
		}
		select {
		case d := <-next:
			batch = append(batch, d)
			if len(batch) == 1 {
				timer.Reset(maxWait)
			}
			if len(batch) >= limit {
				if s.isPaused() {
					// A message handed on before Pause, received once the
					// handler returned, fills the batch: it waits for Resume
					// as a due batch does.
					timer.Reset(pausedBatchRecheck)
					continue
				}
				flush()
			}
		case now := <-pauseCheck.C:
			if len(batch) > 0 {
				if batch = s.expirePausedBatch(batch, now); len(batch) == 0 {
					timer.Stop()
				}
			}
		case <-timer.C:
			if s.isPaused() {
				// The app sees nothing new while paused: the batch waits.
				timer.Reset(pausedBatchRecheck)
				continue
			}
			flush()
		case <-s.ctx.Done():
			// The app never saw this batch: its messages go on as unseen.
			for _, d := range batch {
				s.unhand(d)
			}
			return
		}
	}
}

// expirePausedBatch gives back what waits in batch, which the app has not
// seen, once the subscription has been paused for handoverTimeout, as
// expirePaused does for the messages not yet handed on, so that another
// subscriber gets them. What giving back would lose stays, for Resume. It
// returns what stays in the batch.
func (s *subscription) expirePausedBatch(batch []*Delivery, now time.Time) []*Delivery {
	s.mu.Lock()
	if !s.paused || now.Sub(s.pausedAt) < handoverTimeout {
		s.mu.Unlock()
		return batch
	}
	var back []*Delivery
	kept := batch[:0]
	for _, d := range batch {
		if s.lostIfGivenBackLocked(d) {
			kept = append(kept, d)
		} else {
			back = append(back, d)
		}
	}
	s.mu.Unlock()
	if len(back) > 0 {
		s.log.Warnf("topic %q: paused for %s; giving %d messages of a bulk batch not yet handed to the app back to JetStream", s.topic, handoverTimeout, len(back))
	}
	for _, d := range back {
		_ = d.giveBack(GivenBackPause)
	}
	return kept
}

// batchLimit is how many entries a batch can get: maxN, or fewer when the
// consumer's maxAckPending, as the server has it now, is lower (an operator
// lowered it, and the subscription follows the consumer): JetStream hands
// out no more, and a batch waiting for more would wait out maxWait.
func (s *subscription) batchLimit(maxN int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.consumer != nil && s.consumer.maxAckPending > 0 {
		return max(1, min(maxN, s.consumer.maxAckPending))
	}
	return maxN
}

func (s *subscription) handleBatch(batch []*Delivery, md map[string]string, handler pubsub.BulkHandler) {
	entries := make([]pubsub.BulkMessageEntry, len(batch))
	for i, d := range batch {
		ct := ""
		if d.ContentType != nil {
			ct = *d.ContentType
		}
		entries[i] = pubsub.BulkMessageEntry{
			EntryId:     strconv.FormatUint(d.Sequence, 10) + "-" + strconv.Itoa(i),
			Event:       d.Data,
			ContentType: ct,
			Metadata:    d.Metadata,
		}
	}
	statuses, err := handler(s.ctx, &pubsub.BulkMessage{Entries: entries, Topic: s.topic, Metadata: md})
	byID := make(map[string]error, len(statuses))
	for _, st := range statuses {
		byID[st.EntryId] = st.Error
	}
	for i, d := range batch {
		entryErr, ok := byID[entries[i].EntryId]
		if !ok {
			entryErr = err
		}
		d.settleHandled(entryErr)
	}
}
