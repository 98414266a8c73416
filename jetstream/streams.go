package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dapr/kit/logger"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// streams finds (and, when auto-provisioning, creates or extends) the stream
// that stores a topic. Answers are cached per topic, so the publish path
// touches the JetStream API only the first time it sees a topic.
type streams struct {
	js  natsjs.JetStream
	cfg metadata.Stream
	log logger.Logger // nil: nothing is logged

	mu    sync.Mutex
	known map[string]string // topic -> stream
	ttl   map[string]bool   // stream -> allows per-message TTL
	batch map[string]bool   // stream -> allows atomic batches
	shut  map[string]error  // stream -> why it takes no publish, if so
	noted map[string]bool   // stream -> its differences were logged
}

func newStreams(js natsjs.JetStream, cfg metadata.Stream, log logger.Logger) *streams {
	return &streams{
		js: js, cfg: cfg, log: log,
		known: map[string]string{}, ttl: map[string]bool{}, batch: map[string]bool{}, shut: map[string]error{}, noted: map[string]bool{},
	}
}

func (s *streams) cached(topic string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name, ok := s.known[topic]
	return name, ok
}

// forget drops what is known about a topic, after JetStream said it has no
// stream for it (the stream was deleted, say).
func (s *streams) forget(topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name, ok := s.known[topic]; ok {
		delete(s.ttl, name)
		delete(s.batch, name)
		delete(s.shut, name)
	}
	delete(s.known, topic)
}

// ensure returns the name of the stream that stores topic.
func (s *streams) ensure(ctx context.Context, topic string) (string, error) {
	if name, ok := s.cached(topic); ok {
		return name, nil
	}
	name, info, err := s.lookup(ctx, topic)
	if err != nil {
		return "", err
	}
	if info == nil {
		info, err = s.create(ctx, name, topic)
	} else {
		s.noteDifferences(info.Config)
		if !covers(info.Config.Subjects, topic) {
			info, err = s.extend(ctx, info, topic)
		}
	}
	if err != nil {
		return "", err
	}
	name = info.Config.Name
	s.mu.Lock()
	s.known[topic] = name
	s.ttl[name] = info.Config.AllowMsgTTL
	s.shut[name] = takesNoPublish(info.Config)
	s.mu.Unlock()
	return name, nil
}

// publishable reports why stream name, as last read, takes no publish.
func (s *streams) publishable(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shut[name]
}

// info reads the stream that stores topic now, or nil when none does or it
// cannot be read.
func (s *streams) info(ctx context.Context, topic string) *natsjs.StreamInfo {
	info, _ := s.current(ctx, topic)
	return info
}

// current reads the stream that stores topic now, without creating one, for
// errors that name it; natsjs.ErrStreamNotFound when no stream does. The
// stream known for the topic may be out of date without any publish
// failing: an operator may have moved the topic to another stream, and
// publishes follow the subject there. The known stream is forgotten, so that
// the next publish looks again, only when a look-up by the topic agrees that
// it is gone or holds the topic no more: while a cluster elects leaders, a
// stream may be reported missing for a moment.
func (s *streams) current(ctx context.Context, topic string) (*natsjs.StreamInfo, error) {
	known, isKnown := s.cached(topic)
	if isKnown {
		st, err := s.js.Stream(ctx, known)
		switch {
		case err == nil && covers(st.CachedInfo().Config.Subjects, topic):
			return st.CachedInfo(), nil
		case err != nil && !errors.Is(err, natsjs.ErrStreamNotFound):
			return nil, err
		}
	}
	_, info, err := s.lookup(ctx, topic)
	switch {
	case errors.Is(err, ErrNoStream), err == nil && info == nil:
		s.forget(topic)
		return nil, natsjs.ErrStreamNotFound
	case err != nil:
		return nil, err
	}
	if isKnown && info.Config.Name != known {
		s.forget(topic)
	}
	return info, nil
}

// lookup finds the stream for topic. A nil info with a name means the stream
// does not exist yet and may be created under that name.
func (s *streams) lookup(ctx context.Context, topic string) (string, *natsjs.StreamInfo, error) {
	name := s.cfg.Name
	if name == "" {
		found, err := s.js.StreamNameBySubject(ctx, topic)
		switch {
		case err == nil:
			name = found
		case errors.Is(err, natsjs.ErrStreamNotFound):
			if !s.cfg.AutoProvision {
				return "", nil, fmt.Errorf("%w: create a stream whose subjects include %q, set streamName, or set autoProvision to true", ErrNoStream, topic)
			}
			return metadata.SanitizeName(topic), nil, nil
		default:
			return "", nil, fmt.Errorf("look up the stream for the topic: %w%s", err, unanswered(err))
		}
	}
	st, err := s.js.Stream(ctx, name)
	switch {
	case err == nil:
		return name, st.CachedInfo(), nil
	case errors.Is(err, natsjs.ErrStreamNotFound):
		if !s.cfg.AutoProvision {
			return "", nil, fmt.Errorf("%w: stream %q does not exist; create it with subjects including %q, or set autoProvision to true", ErrNoStream, name, topic)
		}
		return name, nil, nil
	default:
		return "", nil, fmt.Errorf("look up stream %q: %w%s", name, err, unanswered(err))
	}
}

func (s *streams) create(ctx context.Context, name, topic string) (*natsjs.StreamInfo, error) {
	subjects := slices.Clone(s.cfg.Subjects)
	if !covers(subjects, topic) {
		subjects = append(subjects, topic)
	}
	cfg := natsjs.StreamConfig{
		Name:        name,
		Description: "created by the Dapr NATS JetStream pub/sub component",
		Subjects:    subjects,
		Storage:     s.cfg.Storage,
		Replicas:    s.cfg.Replicas,
		MaxAge:      s.cfg.MaxAge,
		MaxMsgs:     s.cfg.MaxMsgs,
		MaxBytes:    s.cfg.MaxBytes,
		Duplicates:  s.cfg.DuplicateWindow,
		AllowMsgTTL: true,
		Retention:   s.cfg.Retention,
		Discard:     s.cfg.Discard,
		MaxMsgSize:  s.cfg.MaxMsgSize,
		Compression: s.cfg.Compression,
		Placement:   s.cfg.Placement,

		MaxMsgsPerSubject: s.cfg.MaxMsgsPerSubject,
	}
	st, err := s.js.CreateStream(ctx, cfg)
	if err == nil {
		s.infof("created stream %q with subjects %v for topic %q, which no stream held", name, subjects, topic)
		return st.CachedInfo(), nil
	}
	// Another instance may have created it meanwhile.
	if existing, lerr := s.js.Stream(ctx, name); lerr == nil {
		info := existing.CachedInfo()
		if covers(info.Config.Subjects, topic) {
			return info, nil
		}
		return s.extend(ctx, info, topic)
	}
	// Or a stream for a wildcard that covers the topic, such as one created
	// for a subscription to orders.> while this publish to orders.new looked.
	if found, lerr := s.js.StreamNameBySubject(ctx, topic); lerr == nil {
		if st, lerr := s.js.Stream(ctx, found); lerr == nil && covers(st.CachedInfo().Config.Subjects, topic) {
			return st.CachedInfo(), nil
		}
	}
	// Or, for a wildcard topic, one stream that holds subjects it covers,
	// such as one created for a publish to orders.new while this
	// subscription to orders.> looked: the topic takes their place.
	if info := s.coveredBy(ctx, topic); info != nil {
		return s.extend(ctx, info, topic)
	}
	return nil, fmt.Errorf("create stream %q for subjects %v: %w%s", name, subjects, err, createRefusal(ctx, s.js, err, cfg))
}

func (s *streams) extend(ctx context.Context, info *natsjs.StreamInfo, topic string) (*natsjs.StreamInfo, error) {
	if !s.cfg.AutoProvision {
		return nil, fmt.Errorf("%w: stream %q has subjects %v, none of which includes %q; add it to the stream, or set autoProvision to true",
			ErrNoStream, info.Config.Name, info.Config.Subjects, topic)
	}
	cfg := info.Config
	// A wildcard topic replaces the subjects it covers, which JetStream
	// would refuse as overlapping: orders.> takes the place of orders.new.
	cfg.Subjects = slices.DeleteFunc(slices.Clone(cfg.Subjects), func(s string) bool { return metadata.SubjectCovers(topic, s) })
	cfg.Subjects = append(cfg.Subjects, topic)
	st, err := s.js.UpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("add subject %q to stream %q: %w; if other streams hold subjects that %q covers, keep them in one stream and set streamName to it",
			topic, cfg.Name, err, topic)
	}
	s.infof("added subject %q to stream %q, whose subjects are now %v", topic, cfg.Name, cfg.Subjects)
	return st.CachedInfo(), nil
}

// infof logs what auto-provisioning changed, so that an operator can see
// where a topic's messages go.
func (s *streams) infof(format string, args ...any) {
	if s.log != nil {
		s.log.Infof(format, args...)
	}
}

// coveredBy returns the one stream with subjects that topic covers, if there
// is exactly one.
func (s *streams) coveredBy(ctx context.Context, topic string) *natsjs.StreamInfo {
	var found *natsjs.StreamInfo
	list := s.js.ListStreams(ctx)
	for info := range list.Info() {
		if slices.ContainsFunc(info.Config.Subjects, func(subj string) bool { return metadata.SubjectCovers(topic, subj) }) {
			if found != nil {
				return nil
			}
			found = info
		}
	}
	if list.Err() != nil {
		return nil
	}
	return found
}

// ensureConfig makes sure stream name has what a publish needs, and
// remembers it in known (unless known is nil). adjust changes cfg to have it and reports whether
// anything changed, or says why the stream can never have it. A change is
// made only when auto-provisioning is on; refused says what to do when it
// is off. what names the change, for its error.
func (s *streams) ensureConfig(ctx context.Context, name string, known map[string]bool, what string,
	adjust func(cfg *natsjs.StreamConfig) (bool, error), refused func() error) error {
	s.mu.Lock()
	ok := known[name]
	s.mu.Unlock()
	if ok {
		return nil
	}
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("look up stream %q: %w", name, err)
	}
	cfg := st.CachedInfo().Config
	changed, err := adjust(&cfg)
	if err != nil {
		return err
	}
	if changed {
		if !s.cfg.AutoProvision {
			return refused()
		}
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("%s on stream %q: %w", what, name, err)
		}
	}
	if known != nil {
		s.mu.Lock()
		known[name] = true
		s.mu.Unlock()
	}
	return nil
}

// ensureTTL makes sure the stream accepts per-message TTLs.
func (s *streams) ensureTTL(ctx context.Context, name string) error {
	return s.ensureConfig(ctx, name, s.ttl, "allow per-message TTL",
		func(cfg *natsjs.StreamConfig) (bool, error) {
			changed := !cfg.AllowMsgTTL
			cfg.AllowMsgTTL = true
			return changed, nil
		},
		func() error {
			return fmt.Errorf("%w: stream %q does not allow per-message TTL (ttlInSeconds); enable allow_msg_ttl on the stream or set autoProvision to true", ErrTTLNotAllowed, name)
		})
}

// ensureSchedules makes sure the stream can hold delayed messages: it allows
// message schedules and covers its schedule subjects. A stream with interest
// retention is refused, since JetStream drops a schedule there that no
// consumer is interested in, and no consumer is: the message would be
// acknowledged and never delivered. The stream is read for every delayed
// publish, since an operator may turn its retention to interest at any
// time (nats stream edit).
func (s *streams) ensureSchedules(ctx context.Context, name string, until time.Time) error {
	subjects := scheduleSubjects(name)
	return s.ensureConfig(ctx, name, nil, fmt.Sprintf("allow message schedules, with the subject %q,", subjects),
		func(cfg *natsjs.StreamConfig) (bool, error) {
			if why := holdsNoSchedule(*cfg, until); why != "" {
				return false, fmt.Errorf("%w: stream %q %s", ErrSchedulesNotAllowed, name, why)
			}
			changed := !cfg.AllowMsgSchedules
			cfg.AllowMsgSchedules = true
			if !covers(cfg.Subjects, scheduleSubject(name)) {
				cfg.Subjects = append(slices.Clone(cfg.Subjects), subjects)
				changed = true
			}
			return changed, nil
		},
		func() error {
			return fmt.Errorf("%w: stream %q cannot hold delayed messages (scheduledSendTime, deliverAfter): set allow_msg_schedules on the stream and add the subject %q to it, or set autoProvision to true",
				ErrSchedulesNotAllowed, name, subjects)
		})
}

// holdsNoSchedule says why a stream of config c cannot keep a delayed
// message until it reaches its topic at until, or "" when it can.
func holdsNoSchedule(c natsjs.StreamConfig, until time.Time) string {
	switch {
	case c.Retention == natsjs.InterestPolicy:
		return "has interest retention, on which JetStream drops a delayed message while it waits, since no consumer is interested in its schedule subject; publish delayed messages (scheduledSendTime, deliverAfter) to a stream with limits or workqueue retention"
	case c.Discard == natsjs.DiscardNew && !c.AllowMsgSchedules:
		return "has discard policy new, with which JetStream refuses message schedules; publish delayed messages (scheduledSendTime, deliverAfter) to a stream with discard old (streamDiscard: old when the component creates it)"
	case c.DenyPurge && !c.AllowMsgSchedules:
		return "has deny_purge set, and JetStream does not turn message schedules on for such a stream; create it with allow_msg_schedules, or publish delayed messages (scheduledSendTime, deliverAfter) to another stream"
	case c.MaxAge > 0 && time.Until(until) > c.MaxAge:
		return fmt.Sprintf("keeps messages for at most %s (its max_age, which streamMaxAge sets when the component creates it), and a delayed message waits in it until %s, so JetStream would remove it before its time; delay it less, or raise the stream's max_age",
			c.MaxAge, until.UTC().Format(time.RFC3339))
	}
	return ""
}

// ensureAtomic makes sure the stream allows atomic batch publish.
func (s *streams) ensureAtomic(ctx context.Context, name string) error {
	return s.ensureConfig(ctx, name, s.batch, "allow atomic publish",
		func(cfg *natsjs.StreamConfig) (bool, error) {
			changed := !cfg.AllowAtomicPublish
			cfg.AllowAtomicPublish = true
			return changed, nil
		},
		func() error {
			return fmt.Errorf("%w: stream %q does not allow atomic publish (bulkPublishAtomic); set allow_atomic on the stream, or set autoProvision to true",
				ErrAtomicNotAllowed, name)
		})
}

// covers reports whether a stream with subjects holds every message of
// topic, even where no one subject takes all of it.
func covers(subjects []string, topic string) bool {
	return metadata.SubjectsCover(subjects, topic)
}
