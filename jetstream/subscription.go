package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// fetchExpiry bounds one pull request.
	fetchExpiry = 30 * time.Second
	// defaultHeartbeat is the idle heartbeat of a pull request when the
	// metadata does not set one. It is short because nats.go (v1.55.0) keeps
	// each finished pull request in memory until twice the heartbeat has
	// passed: at 5s, a busy subscription held some 20 MB of them.
	defaultHeartbeat = time.Second
	// retryMin and retryMax bound the back-off between attempts to set up a
	// consumer or to fetch after an error.
	retryMin = 250 * time.Millisecond
	retryMax = 10 * time.Second
	// startSkew back-dates the start of a new consumer that starts at the
	// subscription request, allowing for clocks of the component and the
	// NATS server that differ a little, and for a publish that overtakes the
	// subscription on its way in. A message published just before the
	// subscription may be delivered; none published after it is missed.
	startSkew = time.Second
	// giveBackDelay is the redelivery delay of a message this subscription
	// gives back unhandled (paused, stopped, or daprd's stream broke). nats.go
	// withdraws an ended pull request a moment after it stops reading it; a
	// message redelivered into it before that would sit until the ack wait.
	giveBackDelay = 100 * time.Millisecond
	// handlerGrace is how long stopping waits for running in-process
	// handlers before their messages are given back.
	handlerGrace = 10 * time.Second
)

// DeliverFunc receives the messages of a subscription one at a time, in the
// order JetStream delivered them. It must settle each Delivery eventually,
// from any goroutine; returning an error gives the message back at once.
type DeliverFunc func(*Delivery) error

// subscription pulls one topic. A fetcher goroutine keeps at most
// MaxInFlight messages held (fetched and not yet settled); a dispatcher hands
// them to the DeliverFunc in order; a ticker keeps held messages alive.
// NATS trouble never ends a subscription: it is retried until stopped.
type subscription struct {
	p         *PubSub
	topic     string
	cons      metadata.Consumer
	requested time.Time
	fn        DeliverFunc
	limiter   *rate.Limiter

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	queue  chan *Delivery
	done   chan struct{}
	wg     sync.WaitGroup // fetcher, dispatcher, ticker
	work   sync.WaitGroup // in-process handlers still running

	// pulling is held while a pull request may be open, so that Pause can
	// wait until it is withdrawn.
	pulling sync.Mutex

	mu       sync.Mutex
	held     map[*Delivery]struct{}
	paused   bool
	pauseCtx context.Context // cancelled by pause, renewed by resume
	unpause  context.CancelFunc
	changed  chan struct{} // a slot was freed, or pause changed
	lastErr  string
}

// SubscribeDeliveries subscribes to req.Topic and calls fn for each message.
// It returns once the subscription is set up locally; the consumer is
// created in the background and re-created after NATS outages. The returned
// channel is closed when ctx is done and every held message has been settled
// or given back to JetStream.
func (p *PubSub) SubscribeDeliveries(ctx context.Context, req pubsub.SubscribeRequest, fn DeliverFunc) (<-chan struct{}, error) {
	s, err := p.subscribe(ctx, req, fn, nil)
	if err != nil {
		return nil, err
	}
	return s.done, nil
}

// subscribe sets up a subscription; before calls start before its goroutines.
func (p *PubSub) subscribe(ctx context.Context, req pubsub.SubscribeRequest, fn DeliverFunc, before func(*subscription)) (*subscription, error) {
	cfg, _, _, err := p.state()
	if err != nil {
		return nil, err
	}
	if err := metadata.ValidSubject(req.Topic, true); err != nil {
		return nil, invalid("subscribe to", req.Topic, fmt.Errorf("%w: topic %s; use a NATS subject such as orders, orders.* or orders.>", metadata.ErrInvalid, err))
	}
	cons, err := cfg.ForSubscription(req.Metadata)
	if err != nil {
		return nil, invalid("subscribe to", req.Topic, err)
	}
	s := &subscription{
		p: p, topic: req.Topic, cons: cons, requested: time.Now().Add(-startSkew), fn: fn,
		queue: make(chan *Delivery, cons.MaxInFlight), done: make(chan struct{}),
		held: map[*Delivery]struct{}{}, changed: make(chan struct{}, 1),
	}
	if cons.RateLimit > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(cons.RateLimit), int(max(cons.RateLimit, 8<<20)))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pauseCtx, s.unpause = context.WithCancel(s.ctx)

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		s.cancel()
		return nil, ErrClosed
	}
	p.subs[s] = struct{}{}
	p.wg.Add(1)
	if p.paused {
		s.pause()
	}
	p.mu.Unlock()

	if before != nil {
		before(s)
	}
	s.wg.Add(3)
	go s.fetchLoop()
	go s.dispatchLoop()
	go s.keepAliveLoop()
	go func() {
		select {
		case <-ctx.Done():
			s.stop()
		case <-s.ctx.Done():
		}
	}()
	go s.finish()
	return s, nil
}

// Subscribe implements pubsub.PubSub. With concurrency single the handler
// sees one message at a time; with parallel, up to maxInFlight at once. A
// message is acknowledged only after its handler returned nil.
func (p *PubSub) Subscribe(ctx context.Context, req pubsub.SubscribeRequest, handler pubsub.Handler) error {
	_, err := p.SubscribeDeliveries(ctx, req, func(d *Delivery) error {
		if !d.sub.cons.Parallel {
			_ = d.Settle(handler(d.sub.ctx, d.Message()))
			return nil
		}
		d.sub.work.Add(1)
		go func() {
			defer d.sub.work.Done()
			_ = d.Settle(handler(d.sub.ctx, d.Message()))
		}()
		return nil
	})
	return err
}

func (s *subscription) durableName() string {
	if s.cons.DurableBase == "" {
		return ""
	}
	return metadata.SanitizeName(s.cons.DurableBase, s.topic)
}

// consumerConfig is the JetStream consumer for this subscription.
func (s *subscription) consumerConfig() jetstream.ConsumerConfig {
	c := s.cons
	cfg := jetstream.ConsumerConfig{
		Durable:       s.durableName(),
		Description:   "Dapr subscription to " + truncate(s.topic, 200),
		FilterSubject: s.topic,
		DeliverPolicy: c.DeliverPolicy,
		AckPolicy:     c.AckPolicy,
		Replicas:      c.Replicas,
		MemoryStorage: c.MemoryStorage,
	}
	switch c.DeliverPolicy {
	case jetstream.DeliverByStartSequencePolicy:
		cfg.OptStartSeq = c.StartSequence
	case jetstream.DeliverByStartTimePolicy:
		t := c.StartTime
		if c.StartAtSubscribe {
			t = s.requested
		}
		cfg.OptStartTime = &t
	}
	if c.AckPolicy != jetstream.AckNonePolicy {
		cfg.AckWait, cfg.MaxDeliver, cfg.BackOff, cfg.MaxAckPending = c.AckWait, c.MaxDeliver, c.BackOff, c.MaxAckPending
	}
	if cfg.Durable == "" {
		cfg.InactiveThreshold = 5 * time.Minute
	}
	return cfg
}

// ensureConsumer finds the stream and finds or creates the consumer. An
// existing durable keeps where it started; its other settings are updated.
func (s *subscription) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	_, js, streams, err := s.p.state()
	if err != nil {
		return nil, err
	}
	stream, err := streams.ensure(ctx, s.topic)
	if err != nil {
		return nil, err
	}
	want := s.consumerConfig()
	if want.Durable == "" {
		return js.CreateConsumer(ctx, stream, want)
	}
	for attempt := 0; ; attempt++ {
		c, err := js.Consumer(ctx, stream, want.Durable)
		if err == nil {
			return s.reconcile(ctx, js, stream, c, want), nil
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			streams.forget(s.topic)
			return nil, err
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, err
		}
		c, err = js.CreateConsumer(ctx, stream, want)
		if err == nil || attempt > 0 {
			return c, err
		}
		// Another replica may have created it first: look it up again.
	}
}

func (s *subscription) reconcile(ctx context.Context, js jetstream.JetStream, stream string, c jetstream.Consumer, want jetstream.ConsumerConfig) jetstream.Consumer {
	have := c.CachedInfo().Config
	if have.FilterSubject != want.FilterSubject {
		s.p.log.Warnf("consumer %q on stream %q filters %q, not %q; using it as it is", want.Durable, stream, have.FilterSubject, want.FilterSubject)
		return c
	}
	want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
	if have.AckWait == want.AckWait && have.MaxDeliver == want.MaxDeliver && have.MaxAckPending == want.MaxAckPending &&
		equalDurations(have.BackOff, want.BackOff) && have.AckPolicy == want.AckPolicy {
		return c
	}
	updated, err := js.UpdateConsumer(ctx, stream, want)
	if err != nil {
		s.p.log.Warnf("consumer %q on stream %q keeps its settings: %v", want.Durable, stream, err)
		return c
	}
	return updated
}

func (s *subscription) fetchLoop() {
	defer s.wg.Done()
	var cons jetstream.Consumer
	wait := retryMin
	for s.ctx.Err() == nil {
		pctx, ok := s.waitResumed()
		if !ok {
			return
		}
		if cons == nil {
			c, err := s.ensureConsumer(pctx)
			if err != nil {
				s.report(err)
				wait = s.sleep(pctx, wait)
				continue
			}
			cons = c
			s.report(nil)
			s.p.log.Infof("subscribed to topic %q with consumer %q on stream %q", s.topic, c.CachedInfo().Name, c.CachedInfo().Stream)
		}
		n := s.reserve(pctx)
		if n == 0 {
			continue
		}
		s.pulling.Lock()
		err := s.fetch(pctx, cons, n)
		s.pulling.Unlock()
		switch {
		case err == nil || pctx.Err() != nil:
			wait = retryMin
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
			errors.Is(err, jetstream.ErrStreamNotFound), s.consumerGone(pctx, cons):
			s.p.log.Warnf("consumer for topic %q is gone (%v); creating it again", s.topic, err)
			cons = nil
		default:
			s.report(err)
			wait = s.sleep(pctx, wait)
		}
	}
}

// consumerGone checks, after a fetch failed, whether the consumer still exists.
func (s *subscription) consumerGone(ctx context.Context, cons jetstream.Consumer) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := cons.Info(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, _, streams, serr := s.p.state()
		if serr == nil {
			streams.forget(s.topic)
		}
	}
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// fetch pulls up to n messages and queues them for the dispatcher. Messages
// arrive as they are published, within one pull request.
func (s *subscription) fetch(ctx context.Context, cons jetstream.Consumer, n int) error {
	hb := s.cons.Heartbeat
	if hb == 0 {
		hb = defaultHeartbeat
	}
	if ctx.Err() != nil {
		// Paused or stopped meanwhile: open no pull request (see withdrawn).
		return nil
	}
	fctx, cancel := context.WithTimeout(ctx, max(fetchExpiry, 3*hb))
	defer cancel()
	batch, err := cons.Fetch(n, jetstream.FetchContext(fctx), jetstream.FetchHeartbeat(hb))
	if err != nil {
		return err
	}
	for msg := range batch.Messages() {
		d := newDelivery(s, msg)
		s.track(d)
		if ctx.Err() != nil {
			_ = d.giveBack()
			continue
		}
		s.queue <- d
	}
	err = batch.Error()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// reserve waits until enough of the MaxInFlight slots are free to be worth a
// pull request (all of them when nothing is held, else half), and returns
// how many are free; 0 when paused or stopped.
func (s *subscription) reserve(ctx context.Context) int {
	limit := s.cons.MaxInFlight
	threshold := max(1, (limit+1)/2)
	for {
		s.mu.Lock()
		free := limit - len(s.held)
		empty := len(s.held) == 0
		s.mu.Unlock()
		if free >= threshold || (empty && free > 0) {
			return free
		}
		select {
		case <-s.changed:
		case <-ctx.Done():
			return 0
		}
	}
}

func (s *subscription) dispatchLoop() {
	defer s.wg.Done()
	for {
		select {
		case d := <-s.queue:
			s.dispatch(d)
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *subscription) dispatch(d *Delivery) {
	s.mu.Lock()
	pctx := s.pauseCtx
	s.mu.Unlock()
	if pctx.Err() != nil {
		// Paused or stopping: let another subscriber have it now.
		_ = d.giveBack()
		return
	}
	if s.limiter != nil {
		if err := s.limiter.WaitN(pctx, min(len(d.Data)*8, s.limiter.Burst())); err != nil {
			_ = d.giveBack()
			return
		}
	}
	// d.touched is not reset here: it is when JetStream last heard of the
	// message, and the keep-alive must count from then, or a message that
	// waited in the queue goes more than an ack wait without InProgress.
	if err := s.fn(d); err != nil {
		_ = d.giveBack()
	}
}

// keepAliveLoop sends InProgress for held messages older than half the ack
// wait, so slow handlers do not get a second copy of what they work on.
func (s *subscription) keepAliveLoop() {
	defer s.wg.Done()
	if s.cons.AckPolicy == jetstream.AckNonePolicy {
		return
	}
	wait := s.cons.AckWait
	if len(s.cons.BackOff) > 0 {
		wait = s.cons.BackOff[0]
	}
	tick := time.NewTicker(max(wait/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case now := <-tick.C:
			for _, d := range s.snapshot() {
				d.keepAlive(now, wait/2)
			}
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *subscription) track(d *Delivery) {
	s.mu.Lock()
	s.held[d] = struct{}{}
	s.mu.Unlock()
}

func (s *subscription) untrack(d *Delivery) {
	s.mu.Lock()
	delete(s.held, d)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *subscription) snapshot() []*Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Delivery, 0, len(s.held))
	for d := range s.held {
		out = append(out, d)
	}
	return out
}

// nakDelay is the redelivery delay after a failed delivery: the backOff step
// for the delivery count, else nakDelay.
func (s *subscription) nakDelay(deliveries uint64) time.Duration {
	if b := s.cons.BackOff; len(b) > 0 {
		i := int(min(max(deliveries, 1)-1, uint64(len(b)-1)))
		return b[i]
	}
	return s.cons.NakDelay
}

func (s *subscription) pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused {
		return
	}
	s.paused = true
	s.unpause()
}

func (s *subscription) resume() {
	s.mu.Lock()
	if s.paused && s.ctx.Err() == nil {
		s.paused = false
		s.pauseCtx, s.unpause = context.WithCancel(s.ctx)
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// withdrawn returns once no pull request of the subscription is open, after
// pause or stop. nats.go drops whatever JetStream still sends to a pull
// request it stopped listening to, and JetStream only redelivers that after
// the ack wait; so Pause must not return while a pull request is open.
func (s *subscription) withdrawn() {
	s.pulling.Lock()
	defer s.pulling.Unlock()
}

// waitResumed blocks while paused; it returns the current run context, or
// false once stopped.
func (s *subscription) waitResumed() (context.Context, bool) {
	for {
		s.mu.Lock()
		paused, pctx := s.paused, s.pauseCtx
		s.mu.Unlock()
		if s.ctx.Err() != nil {
			return nil, false
		}
		if !paused {
			return pctx, true
		}
		select {
		case <-s.changed:
		case <-s.ctx.Done():
			return nil, false
		}
	}
}

func (s *subscription) stop() { s.cancel() }

// finish waits for the goroutines, gives every message still held back to
// JetStream, and unregisters the subscription.
func (s *subscription) finish() {
	<-s.ctx.Done()
	s.mu.Lock()
	s.unpause()
	s.mu.Unlock()
	s.wg.Wait()
	handlersDone := make(chan struct{})
	go func() { s.work.Wait(); close(handlersDone) }()
	select {
	case <-handlersDone:
	case <-time.After(handlerGrace):
		s.p.log.Warnf("topic %q: handlers still running after %s; giving their messages back", s.topic, handlerGrace)
	}
	for _, d := range s.snapshot() {
		_ = d.giveBack()
	}
	s.p.mu.Lock()
	delete(s.p.subs, s)
	s.p.mu.Unlock()
	close(s.done)
	s.p.wg.Done()
}

// report logs a subscription problem once, and its recovery.
func (s *subscription) report(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil && s.lastErr != "":
		s.p.log.Infof("topic %q: recovered", s.topic)
		s.lastErr = ""
	case err != nil && err.Error() != s.lastErr:
		s.lastErr = err.Error()
		s.p.log.Errorf("topic %q: %v; retrying in the background", s.topic, err)
	}
}

func (s *subscription) sleep(ctx context.Context, wait time.Duration) time.Duration {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return min(wait*2, retryMax)
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
