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
	})
	return err
}

func (s *subscription) batch(in <-chan *Delivery, maxN int, maxWait time.Duration, md map[string]string, handler pubsub.BulkHandler) {
	defer s.work.Done()
	batch := make([]*Delivery, 0, maxN)
	timer := time.NewTimer(maxWait)
	timer.Stop()
	defer timer.Stop()
	flush := func() {
		timer.Stop()
		if len(batch) > 0 {
			s.handleBatch(batch, md, handler)
			batch = batch[:0]
		}
	}
	for {
		select {
		case d := <-in:
			batch = append(batch, d)
			if len(batch) == 1 {
				timer.Reset(maxWait)
			}
			if len(batch) >= maxN {
				flush()
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
