package jetstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// apiTimeout bounds one JetStream API call of a subscription.
	apiTimeout = 5 * time.Second
	// refreshBusy paces reading the consumer's settings back while
	// messages are held: another replica may lower the ack wait under them.
	refreshBusy = time.Second
	// verifyTimeout bounds reading the consumer back. It is short: the
	// housekeeping goroutine waits for it, and while a consumer's leader
	// changes, the read waits for the election, during which no pull
	// request is sent again.
	verifyTimeout = time.Second
)

// ephemeralInactive is how long JetStream keeps an ephemeral consumer
// without a subscriber: the one of a subscription that ended without
// deleting it (NATS was away).
const ephemeralInactive = 5 * time.Minute

// refreshIdle paces reading the consumer's settings back while nothing is
// held. Tests shorten it.
var refreshIdle = 15 * time.Second

// consumerState is the consumer as the server has it. Its settings, not the
// metadata's, rule acks and keep-alives: another replica may have changed
// them, and some cannot be changed at all.
type consumerState struct {
	handle        natsjs.Consumer
	stream, name  string
	streamCreated time.Time
	ephemeral     bool
	next          string // the subject pull requests go to
	ackPolicy     natsjs.AckPolicy
	ackWait       time.Duration
	backOff       []time.Duration
	maxDeliver    int
	// maxAckPending is the consumer's, as the server has it (an operator
	// may lower it below maxInFlight); 0 or less is no limit.
	maxAckPending int
	// priority is the consumer's priority policy, and group its priority
	// group, which pull requests must name.
	priority natsjs.PriorityPolicy
	group    string
	// pinnedTTL is how long JetStream keeps a pin without a pull request
	// that carries it.
	pinnedTTL time.Duration
	// maxRequestBatch and maxRequestExpires bound each pull request, when
	// an operator set them (0 otherwise), and maxWaiting how many requests
	// may be open at once.
	maxRequestBatch   int
	maxRequestExpires time.Duration
	maxWaiting        int
	// numPending and numAckPending are from the last consumer info.
	numPending    uint64
	numAckPending int
	// pausedUntil is when an operator's pause of the consumer ends (nats
	// consumer pause); zero when it is not paused.
	pausedUntil time.Time
	refreshed   time.Time
	// idleEvery is how long after refreshed it is read back while idle:
	// refreshIdle, give or take a quarter (see jittered).
	idleEvery time.Duration
	// unread is set while NATS does not allow reading the consumer's info,
	// so the counts above are not current.
	unread bool
	// drained is set when the last held message was settled: the next
	// refresh comes at the busy rate, so that the pending counts show the
	// drain instead of what they were at the last busy refresh.
	drained bool
	// subjectsRead is when the stream's subjects were last read, and moved
	// is set once they no longer cover the topic: an operator moved it to
	// another stream.
	subjectsRead time.Time
	moved        bool
	// coveredAt is when the stream was last seen holding the topic.
	coveredAt time.Time
	// misfiltered is set when a message of another subject came: an
	// operator changed the consumer's filter.
	misfiltered bool
	// abandonedSub receives JetStream's notices of messages the consumer
	// stopped delivering (watchAbandoned).
	abandonedSub *nats.Subscription
}

func (p *PubSub) newConsumerState(c natsjs.Consumer, created time.Time, ephemeral bool) *consumerState {
	info := c.CachedInfo()
	cs := &consumerState{
		handle: c, stream: info.Stream, name: info.Name, streamCreated: created, ephemeral: ephemeral,
		next: p.apiPrefix + "CONSUMER.MSG.NEXT." + info.Stream + "." + info.Name, refreshed: time.Now(),
		coveredAt: time.Now(), // it was found as the topic's stream
	}
	cs.update(info)
	return cs
}

func (cs *consumerState) update(info *natsjs.ConsumerInfo) {
	cs.ackPolicy = info.Config.AckPolicy
	cs.ackWait = info.Config.AckWait
	cs.backOff = info.Config.BackOff
	cs.maxDeliver = info.Config.MaxDeliver
	cs.maxAckPending = info.Config.MaxAckPending
	cs.maxRequestBatch, cs.maxRequestExpires = info.Config.MaxRequestBatch, info.Config.MaxRequestExpires
	cs.maxWaiting = info.Config.MaxWaiting
	cs.numPending, cs.numAckPending = info.NumPending, info.NumAckPending
	cs.pausedUntil = time.Time{}
	if info.Paused && info.Config.PauseUntil != nil {
		cs.pausedUntil = *info.Config.PauseUntil
	}
	cs.priority, cs.group, cs.pinnedTTL = info.Config.PriorityPolicy, "", info.Config.PinnedTTL
	if len(info.Config.PriorityGroups) > 0 {
		cs.group = info.Config.PriorityGroups[0]
	}
}

// shortestAckWait is the shortest time JetStream waits for an ack of any
// delivery: with backOff, each delivery count has its own.
func (cs *consumerState) shortestAckWait() time.Duration {
	w := cs.ackWait
	for _, b := range cs.backOff {
		if w <= 0 || b < w {
			w = b
		}
	}
	if w <= 0 {
		w = 30 * time.Second
	}
	return w
}

func (s *subscription) durableName() string {
	if s.consumerCfg.DurableBase == "" {
		return ""
	}
	return metadata.SanitizeName(s.consumerCfg.DurableBase, s.topic)
}

// consumerConfig is the JetStream consumer for this subscription. A consumer
// made again after it was lost starts where the last one left off.
func (s *subscription) consumerConfig(stream string, created time.Time) natsjs.ConsumerConfig {
	c := s.consumerCfg
	cfg := natsjs.ConsumerConfig{
		Durable:       s.durableName(),
		Description:   "Dapr subscription to " + truncate(s.topic, 200),
		FilterSubject: s.topic,
		DeliverPolicy: c.DeliverPolicy,
		AckPolicy:     c.AckPolicy,
		Replicas:      c.Replicas,
		MemoryStorage: c.MemoryStorage,
	}
	switch c.DeliverPolicy {
	case natsjs.DeliverByStartSequencePolicy:
		cfg.OptStartSeq = c.StartSequence
	case natsjs.DeliverByStartTimePolicy:
		t := c.StartTime
		if c.StartAtSubscribe {
			t = s.requested
		}
		cfg.OptStartTime = &t
	}
	s.mu.Lock()
	seq, ok := s.floor.next(stream, created)
	movedSince := s.movedSince
	s.mu.Unlock()
	switch {
	case ok:
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = natsjs.DeliverByStartSequencePolicy, seq, nil
	case !movedSince.IsZero() && startsLate(cfg.DeliverPolicy, cfg.OptStartTime, movedSince):
		t := movedSince.Add(-startSkew)
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = natsjs.DeliverByStartTimePolicy, 0, &t
	}
	if c.AckPolicy != natsjs.AckNonePolicy {
		cfg.AckWait, cfg.MaxDeliver, cfg.BackOff, cfg.MaxAckPending = c.AckWait, c.MaxDeliver, c.BackOff, c.MaxAckPending
		s.mu.Lock()
		if limit := s.ackPendingLimit; !c.MaxAckPendingGiven && limit > 0 && limit < cfg.MaxAckPending {
			cfg.MaxAckPending = limit
		}
		s.mu.Unlock()
	}
	if c.AckPolicy == natsjs.AckAllPolicy {
		// An ack acknowledges every earlier message of the durable too, so
		// JetStream must hand out no later message while one is unanswered:
		// not to another replica, nor while a failed one waits out its NAK
		// delay. Either would be acknowledged before the failed one came
		// again, and that one lost.
		cfg.MaxAckPending = 1
	}
	if cfg.Durable == "" {
		cfg.InactiveThreshold = ephemeralInactive
	}
	if c.PriorityPolicy != natsjs.PriorityPolicyNone {
		cfg.PriorityPolicy, cfg.PriorityGroups, cfg.PinnedTTL = c.PriorityPolicy, []string{metadata.PriorityGroup}, c.PinnedTTL
	}
	return cfg
}

// startsLate reports whether a consumer with deliver policy p (and start
// time at, for a start by time) would skip messages stored since t.
func startsLate(p natsjs.DeliverPolicy, at *time.Time, t time.Time) bool {
	switch p {
	case natsjs.DeliverNewPolicy, natsjs.DeliverLastPolicy, natsjs.DeliverLastPerSubjectPolicy:
		return true
	case natsjs.DeliverByStartTimePolicy:
		return at != nil && at.After(t)
	}
	return false
}

// streamOf reads the stream that stores the topic. The stream known for it
// comes from a config read earlier, maybe for another topic that the
// stream's wildcard held then. JetStream lets a consumer filter a subject
// its stream does not hold, and such a consumer would wait for nothing, so
// a stream that holds the topic no more is forgotten and the topic looked
// up again.
func (s *subscription) streamOf(ctx context.Context, js natsjs.JetStream, streams *streams) (natsjs.Stream, error) {
	for again := false; ; again = true {
		name, err := streams.ensure(ctx, s.topic)
		if err != nil {
			return nil, err
		}
		st, err := js.Stream(ctx, name)
		switch {
		case errors.Is(err, natsjs.ErrStreamNotFound):
			streams.forget(s.topic)
			return nil, err
		case err != nil:
			return nil, err
		case again || streams.takes(st.CachedInfo().Config, s.topic):
			return st, nil
		}
		streams.forget(s.topic)
	}
}

// ensureConsumer finds the stream and finds or creates the consumer. An
// existing durable keeps where it started; its other settings are updated
// where the server allows it.
func (s *subscription) ensureConsumer(ctx context.Context) (*consumerState, error) {
	cs, err := s.setUpConsumer(ctx)
	if s.learnAckPendingLimit(err) {
		cs, err = s.setUpConsumer(ctx)
	}
	return cs, err
}

// learnAckPendingLimit takes the limit from err, JetStream's refusal of a
// consumer whose max_ack_pending is above a limit (the stream's consumer
// limits, the account's or nats-server's), for a subscription whose
// metadata sets no maxAckPending: it asks for that limit instead of the
// default from then on, as JetStream itself would for a consumer that sets
// none. It reports whether it learned a lower limit.
func (s *subscription) learnAckPendingLimit(err error) bool {
	var apiErr *natsjs.APIError
	if s.consumerCfg.MaxAckPendingGiven || !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeMaxAckPendingExcess {
		return false
	}
	// "consumer max ack pending exceeds system limit of 100"
	desc := apiErr.Description
	limit, perr := strconv.Atoi(desc[strings.LastIndexByte(desc, ' ')+1:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if perr != nil || limit < 1 || (s.ackPendingLimit > 0 && limit >= s.ackPendingLimit) {
		return false
	}
	s.ackPendingLimit = limit
	s.log.Infof("topic %q: JetStream allows a consumer at most %d unacknowledged messages here (a max_ack_pending limit), fewer than the default maxAckPending of %d; the consumer asks for %d", s.topic, limit, s.consumerCfg.MaxAckPending, limit)
	return true
}

// setUpConsumer is one attempt of ensureConsumer.
func (s *subscription) setUpConsumer(ctx context.Context) (*consumerState, error) {
	_, js, streams, err := s.p.state()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	lost := s.p.answers.losses.Load()
	st, err := s.streamOf(ctx, js, streams)
	if err != nil {
		return nil, err
	}
	stream := st.CachedInfo().Config.Name
	if err := transformedAway(st.CachedInfo().Config, s.topic); err != nil {
		return nil, err
	}
	created := st.CachedInfo().Created
	s.p.answers.streamRead(streamKey{conn: s.p.connKey, stream: stream}, created, lost)
	want := s.consumerConfig(stream, created)
	if lim := st.CachedInfo().Config.ConsumerLimits.InactiveThreshold; lim > 0 && want.InactiveThreshold > lim {
		// The stream's consumer limits refuse a consumer kept longer
		// without a subscriber, and no metadata sets this time: an
		// ephemeral consumer left behind goes sooner instead.
		want.InactiveThreshold = lim
	}
	if st.CachedInfo().Config.Retention == natsjs.WorkQueuePolicy {
		if err := s.forWorkQueue(&want, stream); err != nil {
			return nil, err
		}
	}
	if want.Durable == "" {
		c, err := js.CreateConsumer(ctx, stream, want)
		if err != nil {
			return nil, explainConsumerRefusal(ctx, js, err, st.CachedInfo().Config, s.topic, want)
		}
		return s.p.newConsumerState(c, created, true), nil
	}
	if cs := s.stranded(ctx, js, stream, want.Durable, lost); cs != nil {
		return cs, nil
	}
	s.mu.Lock()
	behind := s.floor.behind(stream, created)
	s.mu.Unlock()
	c, err := s.findOrCreate(ctx, js, stream, want, behind)
	if err != nil {
		return nil, explainConsumerRefusal(ctx, js, err, st.CachedInfo().Config, s.topic, want)
	}
	// Listening starts before the durable is updated: JetStream gives up at
	// once on the messages that already had more deliveries than a lowered
	// maxDeliver allows, and sends each notice only once.
	var watch *nats.Subscription
	if want.AckPolicy != natsjs.AckNonePolicy {
		watch = s.listenAbandoned(stream, want.Durable)
	}
	c, err = s.reconcile(ctx, js, stream, c, want)
	if err != nil {
		if watch != nil {
			_ = watch.Unsubscribe()
		}
		return nil, err
	}
	cs := s.p.newConsumerState(c, created, false)
	cs.abandonedSub = watch
	return cs, nil
}

// findOrCreate finds the durable, or creates it from want. behind says
// that this subscription, which had the durable, has delivered nothing
// since it last read its ack floor: it waits a moment for another replica
// to make a lost durable again (see remakeWait).
func (s *subscription) findOrCreate(ctx context.Context, js natsjs.JetStream, stream string, want natsjs.ConsumerConfig, behind bool) (natsjs.Consumer, error) {
	stale := 0
	for attempt := 0; ; attempt++ {
		c, err := js.Consumer(ctx, stream, want.Durable)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, natsjs.ErrStreamNotFound) {
			_, _, streams, _ := s.p.state()
			if streams != nil {
				streams.forget(s.topic)
			}
			return nil, err
		}
		if !errors.Is(err, natsjs.ErrConsumerNotFound) {
			return nil, err
		}
		if behind {
			behind = false
			if c, err := awaitConsumer(ctx, js, stream, want.Durable, remakeWait); err == nil {
				return c, nil
			}
		}
		c, err = js.CreateConsumer(ctx, stream, want)
		if err == nil && stale < staleRetries && restoredStale(c.CachedInfo(), want) {
			// The server gave the new durable the state of the one deleted
			// under the same name: it would deliver again what was acked.
			stale++
			info := c.CachedInfo()
			s.log.Warnf("topic %q: consumer %q made again on stream %q to start at sequence %d took the state of the deleted one (ack floor %d, %d delivered, %d unacknowledged); deleting it and making it again",
				s.topic, want.Durable, stream, want.OptStartSeq, info.AckFloor.Stream, info.Delivered.Consumer, info.NumAckPending)
			if derr := js.DeleteConsumer(ctx, stream, want.Durable); derr != nil && !errors.Is(derr, natsjs.ErrConsumerNotFound) {
				return nil, derr
			}
			select {
			case <-time.After(staleWait):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			attempt = -1
			continue
		}
		if err == nil || attempt > 0 {
			return c, err
		}
		// Another replica may have created it first: look it up again.
	}
}

// remakeWait is how long a subscription that has delivered nothing since
// it last read the durable's ack floor waits, once the durable is gone,
// for another replica to make it again. That replica, which delivered
// since (with priorityPolicy pinned, the pinned one; the others only
// wait), starts it after what it knows was handled; made from this
// subscription's older floor, it would deliver again everything handled
// since that read (up to refreshIdle of messages, or all of them since
// the subscription started). It covers a pull request's expiry and a
// handler's time on a message: the replica that delivered finds the
// durable gone with its next pull request.
const remakeWait = 2 * time.Second

// awaitConsumer waits up to d for durable to exist on stream.
func awaitConsumer(ctx context.Context, js natsjs.JetStream, stream, durable string, d time.Duration) (natsjs.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		if c, err := js.Consumer(ctx, stream, durable); err == nil {
			return c, nil
		}
	}
}

const (
	// staleRetries bounds how often a durable made again with the state of
	// the deleted one is deleted and made again, and staleWait is the pause
	// before that, for the server to finish with the deleted one's files.
	staleRetries = 3
	staleWait    = 100 * time.Millisecond
)

// restoredStale reports whether a durable just created from want, to start
// at a stream sequence, has instead the delivery state of a consumer of the
// same name that was deleted: nats-server may write the deleted consumer's
// state file late, into the directory of the new one, which then restores
// it as its own instead of starting where it was asked to. A consumer that
// starts at OptStartSeq has its ack floor at OptStartSeq-1 or later.
func restoredStale(info *natsjs.ConsumerInfo, want natsjs.ConsumerConfig) bool {
	if info == nil || want.DeliverPolicy != natsjs.DeliverByStartSequencePolicy || want.OptStartSeq <= 1 {
		return false
	}
	if info.Config.DeliverPolicy != want.DeliverPolicy || info.Config.OptStartSeq != want.OptStartSeq {
		return false
	}
	return info.AckFloor.Stream+1 < want.OptStartSeq && (info.Delivered.Consumer > 0 || info.NumAckPending > 0)
}

// reconcile updates an existing durable to the wanted settings. Where the
// server keeps its own, those rule from then on; an ack policy that differs
// is an error, since acking as the server does not expect loses or repeats
// messages.
func (s *subscription) reconcile(ctx context.Context, js natsjs.JetStream, stream string, c natsjs.Consumer, want natsjs.ConsumerConfig) (natsjs.Consumer, error) {
	have := c.CachedInfo().Config
	want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
	if have.MemoryStorage != want.MemoryStorage {
		s.log.Warnf("topic %q: consumer %q on stream %q was created with memoryStorage %v, and JetStream cannot change the storage of a consumer, so memoryStorage %v does not apply to it; delete the consumer (nats consumer rm %s %s) so that it is created again, or set another consumerID",
			s.topic, want.Durable, stream, have.MemoryStorage, want.MemoryStorage, stream, want.Durable)
	}
	want.MemoryStorage = have.MemoryStorage
	if have.AckPolicy != want.AckPolicy {
		return nil, &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"consumer %q on stream %q has ackPolicy %s, and JetStream cannot change it to %s; delete the consumer (nats consumer rm %s %s) so that it is created again, or set another consumerID",
			want.Durable, stream, ackPolicyName(have.AckPolicy), ackPolicyName(want.AckPolicy), stream, want.Durable)}
	}
	if have.FilterSubject == want.FilterSubject && managedDiff(have, want) == "" && !have.HeadersOnly {
		return c, nil
	}
	if have.PriorityPolicy == natsjs.PriorityPolicyPinned && want.PriorityPolicy != natsjs.PriorityPolicyPinned {
		s.dropPin(ctx, js, stream, have)
	}
	updated, err := js.UpdateConsumer(ctx, stream, managedOver(have, want))
	if err == nil {
		return updated, nil
	}
	if have.PriorityPolicy != want.PriorityPolicy {
		return nil, &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"consumer %q on stream %q has priority policy %s, and JetStream refused to change it to %s (%v); delete the consumer (nats consumer rm %s %s) so that it is created again, or set another consumerID",
			want.Durable, stream, priorityName(have.PriorityPolicy), priorityName(want.PriorityPolicy), err, stream, want.Durable)}
	}
	if have.FilterSubject != want.FilterSubject {
		return nil, &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"consumer %q on stream %q filters %q, not %q, and JetStream refused to change it (%v); delete the consumer (nats consumer rm %s %s) or set another consumerID",
			want.Durable, stream, have.FilterSubject, want.FilterSubject, err, stream, want.Durable)}
	}
	diff := managedDiff(have, want)
	s.log.Warnf("topic %q: consumer %q on stream %q keeps its settings, which this subscription follows, as JetStream refused to change them (%v): %s; set them with nats consumer edit %s %s where JetStream allows it, delete the consumer (nats consumer rm %s %s) so that it is created again, or set the metadata back",
		s.topic, want.Durable, stream, err, diff, stream, want.Durable, stream, want.Durable)
	s.mu.Lock()
	s.driftNoted = diff // said here already
	s.mu.Unlock()
	return c, nil
}

// dropPin lets durable have, pinned, serve any request before its policy
// changes: JetStream keeps a consumer's pin when its priority policy
// changes, and then serves only requests that name the pin id, which no
// replica sends once the policy is not pinned, until pinnedTTL passes. So
// the durable goes to overflow first, which pins no one, keeping its
// groups, and then each group is unpinned. Should this fail, the change
// still goes ahead, and the pin ends after pinnedTTL.
func (s *subscription) dropPin(ctx context.Context, js natsjs.JetStream, stream string, have natsjs.ConsumerConfig) {
	step := have
	step.PriorityPolicy = natsjs.PriorityPolicyOverflow
	_, err := js.UpdateConsumer(ctx, stream, step)
	var st natsjs.Stream
	if err == nil {
		st, err = js.Stream(ctx, stream)
	}
	for _, group := range have.PriorityGroups {
		if err == nil {
			err = st.UnpinConsumer(ctx, have.Durable, group)
		}
	}
	if err != nil {
		s.log.Warnf("topic %q: unpinning consumer %q on stream %q before its priority policy changes: %v; replicas wait for its pinnedTTL (%s)",
			s.topic, have.Durable, stream, err, have.PinnedTTL)
	}
}

// managedDiff words how the settings of consumer have that this component
// manages, bar its filter, differ from want's; "" when they do not. The
// server takes a backOff's first step as the ack wait. Replicas count, as
// managedOver sets them: a rolling update that changes only them must still
// update the durable.
func managedDiff(have, want natsjs.ConsumerConfig) string {
	if len(want.BackOff) > 0 {
		want.AckWait = want.BackOff[0]
	}
	var diffs []string
	differs := func(name string, h, w any) {
		diffs = append(diffs, fmt.Sprintf("%s %v (this subscription: %v)", name, h, w))
	}
	if have.AckWait != want.AckWait {
		differs("ackWait", have.AckWait, want.AckWait)
	}
	if have.MaxDeliver != want.MaxDeliver {
		differs("maxDeliver", have.MaxDeliver, want.MaxDeliver)
	}
	if have.MaxAckPending != want.MaxAckPending {
		differs("maxAckPending", have.MaxAckPending, want.MaxAckPending)
	}
	if !slices.Equal(have.BackOff, want.BackOff) {
		differs("backOff", have.BackOff, want.BackOff)
	}
	if have.PriorityPolicy != want.PriorityPolicy || !slices.Equal(have.PriorityGroups, want.PriorityGroups) {
		differs("priorityPolicy", priorityName(have.PriorityPolicy), priorityName(want.PriorityPolicy))
	} else if have.PinnedTTL != want.PinnedTTL {
		differs("pinnedTTL", have.PinnedTTL, want.PinnedTTL)
	}
	// Replicas are managed only where the metadata sets them: 0 leaves an
	// operator's choice (or the stream's count) alone.
	if want.Replicas > 0 && have.Replicas != want.Replicas {
		differs("replicas", have.Replicas, want.Replicas)
	}
	return strings.Join(diffs, ", ")
}

// noteDrift warns once about each way in which the consumer's managed
// settings came to differ from this subscription's: another replica with
// other metadata subscribed after it (a rolling update), or an operator
// edited the consumer. The subscription follows the consumer; setting its
// own again would undo what the other replica set, and that one would set
// its own back.
func (s *subscription) noteDrift(cs *consumerState, have natsjs.ConsumerConfig) {
	if cs.ackPolicy == natsjs.AckNonePolicy {
		return
	}
	diff := managedDiff(have, s.consumerConfig(cs.stream, cs.streamCreated))
	s.mu.Lock()
	fresh := diff != "" && diff != s.driftNoted
	s.driftNoted = diff
	s.mu.Unlock()
	if fresh {
		s.log.Warnf("topic %q: consumer %q on stream %q has settings other than this subscription's: %s. %sAnother replica with other metadata set them (a rolling update), or an operator did; the subscription follows the consumer. Once every replica runs the same metadata, restart one, or set them with nats consumer edit %s %s",
			s.topic, cs.name, cs.stream, diff, replicasLowered(have, s.consumerConfig(cs.stream, cs.streamCreated), cs.stream, cs.name), cs.stream, cs.name)
	}
}

// replicasLowered explains a durable with fewer replicas than the metadata
// sets, which no replica or operator need have asked for: JetStream lowers
// a durable's replicas to the stream's when the stream is scaled down, and
// leaves them there when the stream is scaled up again, so the durable
// stays on fewer servers than the metadata asks for until it is edited.
func replicasLowered(have, want natsjs.ConsumerConfig, stream, name string) string {
	if want.Replicas == 0 || have.Replicas >= want.Replicas {
		return ""
	}
	return fmt.Sprintf("If JetStream lowered them to the stream's when the stream was scaled down (nats stream edit --replicas), it does not raise them when the stream is scaled up again: nats consumer edit %s %s --replicas %d sets them back. ",
		stream, name, want.Replicas)
}

// managedOver is the consumer have with the settings this component manages
// taken from want, and with each message's data (headers_only off): the app
// needs it. What an operator set that the component does not manage,
// such as ack sampling, metadata, pull request limits or a pause, stays as
// it is, as nats consumer edit leaves it. Replicas follow the metadata only
// where it sets them.
func managedOver(have, want natsjs.ConsumerConfig) natsjs.ConsumerConfig {
	cfg := have
	cfg.FilterSubject, cfg.FilterSubjects = want.FilterSubject, nil
	cfg.AckWait, cfg.MaxDeliver, cfg.MaxAckPending, cfg.BackOff = want.AckWait, want.MaxDeliver, want.MaxAckPending, want.BackOff
	cfg.PriorityPolicy, cfg.PriorityGroups, cfg.PinnedTTL = want.PriorityPolicy, want.PriorityGroups, want.PinnedTTL
	cfg.HeadersOnly = false
	if want.Replicas > 0 {
		cfg.Replicas = want.Replicas
	}
	return cfg
}

// priorityName is the metadata value for p.
func priorityName(p natsjs.PriorityPolicy) string {
	switch p {
	case natsjs.PriorityPolicyPinned:
		return "pinned"
	case natsjs.PriorityPolicyOverflow:
		return "overflow"
	case natsjs.PriorityPolicyNone:
		return "none"
	}
	return fmt.Sprint(int(p))
}

// ackPolicyName is the metadata value for p.
func ackPolicyName(p natsjs.AckPolicy) string {
	switch p {
	case natsjs.AckNonePolicy:
		return "none"
	case natsjs.AckAllPolicy:
		return "all"
	}
	return "explicit"
}

// refresh reads the consumer's settings back from the server, so that
// keep-alives follow an ack wait another replica changed, and notices a
// consumer that was deleted while idle.
func (s *subscription) refresh(now time.Time) {
	s.mu.Lock()
	cs := s.consumer
	var every time.Duration
	if cs != nil {
		every = cs.idleEvery
	}
	if len(s.held) > 0 || (cs != nil && cs.drained) {
		every = refreshBusy
	}
	s.mu.Unlock()
	if cs == nil || now.Sub(cs.refreshed) < every {
		return
	}
	s.verify(cs)
}

// jittered is d give or take a quarter: subscriptions set up together (at
// startup, or when NATS comes back) would otherwise read their consumers
// back in the same instant every period, for good, a burst of as many
// JetStream API requests as the app has topics.
func jittered(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

// verify reads the consumer's info; a consumer or stream that is gone is
// set up again.
func (s *subscription) verify(cs *consumerState) {
	ctx, cancel := context.WithTimeout(s.ctx, verifyTimeout)
	defer cancel()
	asked := time.Now()
	info, err := cs.handle.Info(ctx)
	if err == nil {
		s.reportRead(nil)
	}
	switch {
	case err == nil && !filtersTopic(info.Config, s.topic):
		s.refilter(ctx, cs, info.Config)
	case err == nil && info.Config.HeadersOnly:
		s.dataBack(ctx, cs, info.Config)
	case err == nil:
		s.mu.Lock()
		wasPaused := cs.pausedUntil
		cs.update(info)
		cs.refreshed, cs.drained, cs.unread = time.Now(), false, false
		s.floor.serverFloor(cs.stream, cs.streamCreated, info.AckFloor.Stream)
		s.mu.Unlock()
		s.noteDrift(cs, info.Config)
		s.notePause(cs, wasPaused)
		s.followMovedTopic(ctx, cs)
	case errors.Is(err, natsjs.ErrConsumerNotFound), errors.Is(err, natsjs.ErrStreamNotFound):
		s.gone(err)
	default:
		// Delivery goes on without the read, so a denial fails neither
		// Ping nor the readiness probe; but it is named, and the counts it
		// can no longer read are not reported as current.
		denied := s.p.denied("read the consumer of", s.topic, err, asked)
		// A read that fails otherwise (NATS away, a timeout) learns
		// nothing either: counts unread since a denial stay unread.
		s.mu.Lock()
		cs.refreshed, cs.unread = time.Now(), cs.unread || denied != nil
		s.mu.Unlock()
		if denied != nil {
			s.reportRead(denied)
		}
	}
}

// filtersTopic reports whether a consumer of config c takes exactly the
// topic's messages.
func filtersTopic(c natsjs.ConsumerConfig, topic string) bool {
	if len(c.FilterSubjects) > 0 {
		return len(c.FilterSubjects) == 1 && c.FilterSubjects[0] == topic
	}
	return c.FilterSubject == topic
}

// refilter sets up again a consumer whose filter is not the topic: an
// operator changed it. A filter that still covers the topic skipped none of
// its messages, so it is set back in place: deleting the consumer would
// also let a stream with interest retention remove the backlog that only
// this consumer wanted. Otherwise setting it back would not deliver the
// topic's messages that the consumer skipped meanwhile, so it is deleted
// and made again, starting after the last message this subscription knows
// to be handled. Its ack floor is not taken: it counts what it skipped.
func (s *subscription) refilter(ctx context.Context, cs *consumerState, have natsjs.ConsumerConfig) {
	filters := have.FilterSubjects
	if len(filters) == 0 {
		filters = []string{have.FilterSubject}
	}
	filter := strings.Join(filters, ", ")
	_, js, _, err := s.p.state()
	if err == nil && metadata.SubjectsCover(filters, s.topic) && s.filterBack(ctx, js, cs, have) == nil {
		s.log.Warnf("topic %q: consumer %q on stream %q filters %q, wider than the topic (changed by an operator); its filter is set back to the topic",
			s.topic, cs.name, cs.stream, filter)
		return
	}
	if err == nil {
		err = js.DeleteConsumer(ctx, cs.stream, cs.name)
	}
	if err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
		s.log.Errorf("topic %q: consumer %q on stream %q filters %q, not the topic, and deleting it failed (%v); its filter is set back, and the topic's messages it skipped meanwhile are not delivered",
			s.topic, cs.name, cs.stream, filter, err)
	} else {
		s.log.Warnf("topic %q: consumer %q on stream %q filters %q, not the topic (changed by an operator); making it again, from the last message this subscription knows to be handled",
			s.topic, cs.name, cs.stream, filter)
	}
	s.drop()
}

// filterBack sets the filter of consumer have back to the topic, in place.
func (s *subscription) filterBack(ctx context.Context, js natsjs.JetStream, cs *consumerState, have natsjs.ConsumerConfig) error {
	have.FilterSubject, have.FilterSubjects = s.topic, nil
	return s.editBack(ctx, js, cs, have)
}

// dataBack turns headers_only off on a consumer an operator set it on: the
// app needs each message's data. Meanwhile, what comes without it has its
// data read from the stream (withData).
func (s *subscription) dataBack(ctx context.Context, cs *consumerState, have natsjs.ConsumerConfig) {
	_, js, _, err := s.p.state()
	if err == nil {
		have.HeadersOnly = false
		err = s.editBack(ctx, js, cs, have)
	}
	if err != nil {
		s.log.Errorf("topic %q: consumer %q on stream %q sends messages without their data (headers_only, set by an operator), and turning that off failed (%v); each message's data is read from the stream meanwhile. Turn it off with nats consumer edit %s %s --no-headers-only",
			s.topic, cs.name, cs.stream, err, cs.stream, cs.name)
		s.mu.Lock()
		cs.refreshed = time.Now()
		s.mu.Unlock()
		return
	}
	s.log.Warnf("topic %q: consumer %q on stream %q sent messages without their data (headers_only, set by an operator); turned that off again, since the app needs the data",
		s.topic, cs.name, cs.stream)
}

// editBack updates consumer cs to cfg, in place, and follows it.
func (s *subscription) editBack(ctx context.Context, js natsjs.JetStream, cs *consumerState, cfg natsjs.ConsumerConfig) error {
	c, err := js.UpdateConsumer(ctx, cs.stream, cfg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	cs.update(c.CachedInfo())
	cs.refreshed, cs.misfiltered = time.Now(), false
	s.mu.Unlock()
	return nil
}

// followMovedTopic notices a topic that an operator moved to another stream
// (its subject removed from this one): this consumer then receives nothing
// new. It moves once the consumer has nothing left to deliver or to be
// acknowledged, so that what this stream still holds for the topic is not
// left behind. The next consumer is set up on whichever stream holds the
// topic now, as after a lost consumer.
func (s *subscription) followMovedTopic(ctx context.Context, cs *consumerState) {
	s.mu.Lock()
	// The stream's subjects are read back as often as the consumer, while
	// idle.
	due := !cs.moved && time.Since(cs.subjectsRead) >= s.idleEvery
	s.mu.Unlock()
	if due && !s.streamStillCovers(ctx, cs) {
		s.mu.Lock()
		cs.moved = true
		s.movedSince = cs.coveredAt
		s.mu.Unlock()
		s.log.Warnf("topic %q: stream %q no longer holds it; following it to the stream that does, once consumer %q has handled the %s pending and the %s awaiting an ack",
			s.topic, cs.stream, cs.name, plural(int64(cs.numPending), "message"), plural(int64(cs.numAckPending), "message"))
	}
	s.mu.Lock()
	left := cs.moved && cs.numPending == 0 && cs.numAckPending == 0 && len(s.held) == 0
	s.mu.Unlock()
	if !left || s.drop() == nil {
		return
	}
	if cs.ephemeral {
		s.log.Infof("topic %q: consumer %q on stream %q has handled what the stream held for it; moving to the stream that holds it now", s.topic, cs.name, cs.stream)
		return
	}
	s.log.Infof("topic %q: consumer %q on stream %q has handled what the stream held for it; moving to the stream that holds it now (the consumer stays on %q: remove it with nats consumer rm %s %s)",
		s.topic, cs.name, cs.stream, cs.stream, cs.stream, cs.name)
}

// streamStillCovers reads the subjects of the consumer's stream; true when
// they cannot be read, since verify notices a stream that is gone.
func (s *subscription) streamStillCovers(ctx context.Context, cs *consumerState) bool {
	_, js, streams, err := s.p.state()
	if err != nil {
		return true
	}
	info, err := s.p.streamReads.read(ctx, js, cs.stream, s.idleEvery/2)
	s.mu.Lock()
	cs.subjectsRead = time.Now()
	s.mu.Unlock()
	if err != nil {
		return true
	}
	if err := transformedAway(info.Config, s.topic); err != nil {
		// The consumer receives nothing more: set up again, the
		// subscription reports why it cannot go on, until the stream is
		// fixed.
		s.log.Errorf("topic %q: %v", s.topic, err)
		s.drop()
		return true
	}
	if !streams.takes(info.Config, s.topic) {
		return false
	}
	s.mu.Lock()
	cs.coveredAt = cs.subjectsRead
	s.mu.Unlock()
	return true
}

// streamReads shares the reads of a stream's config among the
// subscriptions of an instance that check it for a moved topic: an app with
// many topics on one stream would otherwise send JetStream one stream info
// request per topic every refreshIdle, all for the same answer.
type streamReads struct {
	mu     sync.Mutex
	byName map[string]*streamRead
}

// streamRead is the last read of one stream. mu is held while reading, so
// that checks made meanwhile wait for that read instead of sending their own.
type streamRead struct {
	mu   sync.Mutex
	info *natsjs.StreamInfo
	at   time.Time
}

// read returns the config of stream name as read at most maxAge ago, and
// reads it when there is none so recent.
func (r *streamReads) read(ctx context.Context, js natsjs.JetStream, name string, maxAge time.Duration) (*natsjs.StreamInfo, error) {
	e := r.entry(name)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.info != nil && time.Since(e.at) < maxAge {
		return e.info, nil
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		e.info = nil
		return nil, err
	}
	e.info, e.at = st.CachedInfo(), time.Now()
	return e.info, nil
}

func (r *streamReads) entry(name string) *streamRead {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byName == nil {
		r.byName = map[string]*streamRead{}
	}
	e := r.byName[name]
	if e == nil {
		e = &streamRead{}
		r.byName[name] = e
	}
	return e
}

// transformedAway refuses a stream whose subject transform stores the
// topic's messages under other subjects: a consumer that filters the topic
// would receive none of them.
func transformedAway(cfg natsjs.StreamConfig, topic string) error {
	tr := cfg.SubjectTransform
	if tr == nil {
		return nil
	}
	src := tr.Source
	if src == "" {
		src = ">"
	}
	if tr.Destination == src || !(metadata.SubjectCovers(src, topic) || metadata.SubjectCovers(topic, src)) {
		return nil
	}
	return &Error{Op: "subscribe to", Topic: topic, Kind: KindRejected, Err: fmt.Errorf(
		"stream %q stores messages of %q under other subjects (its subject transform %q to %q), so a consumer of topic %q receives none of them; remove the transform (nats stream edit %s), or subscribe to the subjects it stores",
		cfg.Name, src, tr.Source, tr.Destination, topic, cfg.Name)}
}

// gone drops a consumer that no longer exists, so that it is set up again,
// starting after the last message known to be acknowledged. The inbox stays:
// JetStream may still send what it had in flight.
func (s *subscription) gone(why error) {
	if cs := s.drop(); cs != nil {
		s.log.Warnf("topic %q: consumer %q on stream %q is gone (%v); creating it again", s.topic, cs.name, cs.stream, why)
	}
}

// drop forgets the consumer and the topic's stream, and wakes housekeeping
// to set both up again. It returns the consumer dropped, if any. The next
// consumer starts no later than the last time this one's stream was seen
// holding the topic, whatever the deliver policy, unless the resume point
// says where: a stream lost with the server's store, or replaced, is made
// again while the subscription is away, and what was published to it
// meanwhile is new to the subscription.
func (s *subscription) drop() *consumerState {
	s.mu.Lock()
	cs := s.consumer
	if cs == nil {
		s.mu.Unlock()
		return nil
	}
	s.consumer = nil
	if s.movedSince.IsZero() {
		s.movedSince = cs.coveredAt
	}
	s.outstanding = 0
	s.retryAt, s.retryWait = time.Time{}, retryMin
	s.mu.Unlock()
	s.stopWatching(cs)
	if _, _, streams, err := s.p.state(); err == nil {
		streams.forget(s.topic)
	}
	s.poke()
	return cs
}

// resumePoint tracks, for the stream a subscription reads, the first message
// that might not be acknowledged, so that a consumer lost to an admin or to
// the server's state is made again without replaying what was handled.
type resumePoint struct {
	stream  string
	created time.Time
	highest uint64              // highest stream sequence delivered here
	unacked map[uint64]struct{} // delivered here and not acknowledged
	floor   uint64              // the consumer's ack floor, as last read
}

func newResumePoint() resumePoint { return resumePoint{unacked: map[uint64]struct{}{}} }

func (r *resumePoint) delivered(seq uint64) {
	if seq == 0 {
		return
	}
	r.highest = max(r.highest, seq)
	if seq > r.floor {
		r.unacked[seq] = struct{}{}
	}
}

func (r *resumePoint) acked(seq uint64) { delete(r.unacked, seq) }

// holds reports whether d is of the stream r tracks, and not of another
// stream made before it under the same name, whose sequences say nothing
// of this one's.
func (r *resumePoint) holds(d *Delivery) bool {
	return d.stream.stream == r.stream && (d.streamCreated.IsZero() || d.streamCreated.Equal(r.created))
}

// serverFloor records the consumer's ack floor on a stream, starting over
// when the stream is another one than before.
func (r *resumePoint) serverFloor(stream string, created time.Time, floor uint64) {
	if r.stream != stream || !r.created.Equal(created) {
		*r = newResumePoint()
		r.stream, r.created = stream, created
	}
	r.floor = max(r.floor, floor)
	for seq := range r.unacked {
		if seq <= r.floor {
			delete(r.unacked, seq)
		}
	}
}

// behind reports whether r knows stream, as created, and nothing delivered
// on it here since the consumer's ack floor was last read: a consumer made
// from r would start at that floor, which other replicas may have passed.
func (r *resumePoint) behind(stream string, created time.Time) bool {
	return r.stream == stream && r.created.Equal(created) && r.highest <= r.floor
}

// next is the stream sequence a new consumer on stream should start at; false
// when nothing is known of that stream.
func (r *resumePoint) next(stream string, created time.Time) (uint64, bool) {
	if r.stream != stream || !r.created.Equal(created) || (r.highest == 0 && r.floor == 0) {
		return 0, false
	}
	n := r.highest + 1
	for seq := range r.unacked {
		n = min(n, seq)
	}
	return max(n, r.floor+1), true
}

// problem is what keeps a subscription from delivering, if anything.
type problem struct {
	err       string
	permanent bool // retrying cannot fix it; it needs a change by an operator
	since     time.Time
	logged    time.Time
	escalated bool // logged as an error, having lasted stuckAfter
}

// report logs a subscription problem, again at most every reportEvery while
// it persists, and its recovery.
func (s *subscription) report(err error) { s.reportOn(&s.problem, err) }

// reportDeadLetter is report for the problem of publishing the dead letter
// of the message key names: each has its own, so that one stored does not
// clear another still refused.
func (s *subscription) reportDeadLetter(key string, err error) {
	s.mu.Lock()
	pr := s.deadProblems[key]
	if pr == nil && err != nil {
		pr = &problem{}
		if s.deadProblems == nil {
			s.deadProblems = make(map[string]*problem)
		}
		s.deadProblems[key] = pr
	}
	s.mu.Unlock()
	if pr == nil {
		return
	}
	s.reportOn(pr, err)
	if err == nil {
		s.forgetDeadLetter(key)
	}
}

// forgetDeadLetter drops the problem of the dead letter key names, without
// a word: the message went to another subscription, or this one ended.
func (s *subscription) forgetDeadLetter(key string) {
	s.mu.Lock()
	delete(s.deadProblems, key)
	s.mu.Unlock()
}

// problemsLocked are s's problems; s.mu is held.
func (s *subscription) problemsLocked() []problem {
	all := []problem{s.problem}
	for _, pr := range s.deadProblems {
		all = append(all, *pr)
	}
	return all
}

// reportRead is report for the problem of reading the consumer's info back.
func (s *subscription) reportRead(err error) { s.reportOn(&s.readProblem, err) }

// reportOn is report for pr, one of s's problems.
func (s *subscription) reportOn(pr *problem, err error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil && pr.err != "":
		s.log.Infof("topic %q: recovered", s.topic)
		*pr = problem{}
	case err == nil:
	case err.Error() != pr.err:
		*pr = problem{err: err.Error(), permanent: KindOf(err) != KindUnavailable, since: now, logged: now}
		// What retrying may fix (a leader being elected, NATS away) is a
		// warning until it lasts stuckAfter, when Ping fails with it too:
		// then it comes again as an error.
		if pr.permanent {
			s.log.Errorf("topic %q: %v; retrying in the background", s.topic, err)
		} else {
			s.log.Warnf("topic %q: %v; retrying in the background", s.topic, err)
		}
	case !pr.permanent && !pr.escalated && now.Sub(pr.since) >= stuckAfter:
		pr.escalated, pr.logged = true, now
		s.log.Errorf("topic %q: %v (for %s); retrying in the background", s.topic, err, now.Sub(pr.since).Round(time.Second))
	case now.Sub(pr.logged) >= reportEvery:
		pr.logged = now
		s.log.Errorf("topic %q: %v (for %s); retrying in the background", s.topic, err, now.Sub(pr.since).Round(time.Second))
	}
}

// failing describes the subscription's problem when it has kept it from
// delivering for stuckAfter, or when retrying cannot fix it.
func (s *subscription) failing(now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var why []string
	for _, pr := range s.problemsLocked() {
		if pr.stuck(now) {
			why = append(why, fmt.Sprintf("topic %q: %s (for %s)", s.topic, pr.err, now.Sub(pr.since).Round(time.Second)))
		}
	}
	return strings.Join(why, "; ")
}

// stuck reports whether pr fails Ping and the readiness probe: retrying
// cannot fix it, or it has kept the subscription from delivering for
// stuckAfter. Both probes follow this one rule, so that neither passes
// while the other fails.
func (pr problem) stuck(now time.Time) bool {
	return pr.err != "" && (pr.permanent || now.Sub(pr.since) >= stuckAfter)
}

func sortBySequence(ds []*Delivery) {
	slices.SortFunc(ds, func(a, b *Delivery) int {
		switch {
		case a.Sequence < b.Sequence:
			return -1
		case a.Sequence > b.Sequence:
			return 1
		}
		return 0
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut between characters: a header, or daprd's protobuf, carries
	// valid UTF-8 only.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// notePause logs a pause of the consumer that an operator began, changed or
// ended, so that a topic delivering nothing on purpose is not taken for a
// stuck one.
func (s *subscription) notePause(cs *consumerState, was time.Time) {
	now := cs.pausedUntil
	switch {
	case now.Equal(was):
	case now.IsZero():
		s.log.Infof("topic %q: consumer %q on stream %q is no longer paused; delivery goes on", s.topic, cs.name, cs.stream)
	default:
		s.log.Infof("topic %q: consumer %q on stream %q is paused until %s, so nothing is delivered before then; nats consumer resume %s %s ends the pause",
			s.topic, cs.name, cs.stream, now.UTC().Format(time.RFC3339), cs.stream, cs.name)
	}
}
