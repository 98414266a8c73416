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

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
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
	// api is told when no server answered a JetStream API request, and
	// says where it went and the fix.
	api *jetStreamAPI

	mu    sync.Mutex
	known map[string]string // topic -> stream
	ttl   map[string]bool   // stream -> allows per-message TTL
	batch map[string]bool   // stream -> allows atomic batches
	shut  map[string]error  // stream -> why it takes no publish, if so
	fed   map[string]error  // topic -> why its stream, which only sources it, takes no publish of it
	noted map[string]bool   // stream -> its differences were logged
	// held keeps the config last read of each stream found for a topic,
	// to find the stream of a topic not seen before without asking (see
	// knownLocked).
	held map[string]natsjs.StreamConfig

	strayed map[string]bool // topic -> a stream other than streamName's holding it was logged
}

// streamEdits lets one change of a stream's config run at a time in this
// process, whichever instance makes it: several daprds may share one
// component process, and one stream. Each change reads the config and
// writes it back whole, and would undo another one made in between. Worse,
// nats-server applies two updates of one stream that arrive together each
// against the subjects as they were before both: it subscribes the stream
// twice to a subject both add, and stores every message published to it
// twice, or unsubscribes one that the config still holds (see rehear).
var streamEdits = struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex // stream -> its lock
}{locks: map[string]*sync.Mutex{}}

// editStream waits until no other change of stream name runs in this
// process, and returns the function that ends this one.
func editStream(name string) (done func()) {
	streamEdits.mu.Lock()
	l, ok := streamEdits.locks[name]
	if !ok {
		l = &sync.Mutex{}
		streamEdits.locks[name] = l
	}
	streamEdits.mu.Unlock()
	l.Lock()
	return l.Unlock
}

const (
	// extendTries bounds the attempts to add a topic to a stream whose
	// subjects other instances change at the same time.
	extendTries = 5
	// extendBackOff is the most an attempt waits after another
	// instance's change undid the one before.
	extendBackOff = 50 * time.Millisecond
)

func newStreams(js natsjs.JetStream, cfg metadata.Stream, api *jetStreamAPI, log logger.Logger) *streams {
	return &streams{
		js: js, cfg: cfg, log: log, api: api,
		known: map[string]string{}, ttl: map[string]bool{}, batch: map[string]bool{}, shut: map[string]error{}, fed: map[string]error{}, noted: map[string]bool{},
		strayed: map[string]bool{}, held: map[string]natsjs.StreamConfig{},
	}
}

// maxKnownTopics bounds the topics whose stream is remembered one by one.
// An app may publish to a topic per entity, and what a stream's config
// holds is found again without asking JetStream (see knownLocked).
const maxKnownTopics = 10000

func (s *streams) cached(topic string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.knownLocked(topic)
}

// knownLocked returns the stream known to store topic. A topic not seen
// before is known too when the config last read of a stream found for
// another topic holds it, as a wildcard does: an app that publishes to a
// topic per entity (orders.<id>) asks JetStream for the stream once, not
// for every new topic. Only the stream's subjects count when the stream
// was found by subject: a look-up would find another stream for a topic it
// only sources. A config that is out of date fails the publish, which
// forgets it (sendAgain) and looks again. s.mu is held.
func (s *streams) knownLocked(topic string) (string, bool) {
	if name, ok := s.known[topic]; ok {
		return name, true
	}
	for name, c := range s.held {
		if covers(c.Subjects, topic) || (s.cfg.Name != "" && s.takes(c, topic)) {
			s.rememberLocked(topic, c)
			return name, true
		}
	}
	return "", false
}

// rememberLocked records that the stream of config c stores topic. s.mu is
// held.
func (s *streams) rememberLocked(topic string, c natsjs.StreamConfig) {
	if len(s.known) >= maxKnownTopics {
		clear(s.known)
		clear(s.fed)
	}
	s.known[topic] = c.Name
	s.held[c.Name] = c
	s.ttl[c.Name] = c.AllowMsgTTL
	s.shut[c.Name] = takesNoPublish(c)
	s.fed[topic] = sourcedOnly(c, topic)
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
		delete(s.held, name)
	}
	delete(s.known, topic)
	delete(s.fed, topic)
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
		if !s.takes(info.Config, topic) {
			info, err = s.extend(ctx, info, topic)
		}
	}
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.rememberLocked(topic, info.Config)
	s.mu.Unlock()
	return info.Config.Name, nil
}

// publishable reports why stream name, as last read, takes no publish of
// topic.
func (s *streams) publishable(topic, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fed[topic]; err != nil {
		return err
	}
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
		case err == nil && s.takes(st.CachedInfo().Config, topic):
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
		s.heard(err, func(ctx context.Context) error {
			_, err := s.js.StreamNameBySubject(ctx, topic)
			return err
		})
		switch {
		case err == nil:
			name = found
		case errors.Is(err, natsjs.ErrStreamNotFound):
			if !s.cfg.AutoProvision {
				return "", nil, fmt.Errorf("%w: create a stream whose subjects include %q, set streamName, or set autoProvision to true", ErrNoStream, topic)
			}
			return metadata.SanitizeName(topic), nil, nil
		default:
			return "", nil, fmt.Errorf("look up the stream for the topic: %w%s", err, s.unanswered(err))
		}
	}
	st, err := s.js.Stream(ctx, name)
	s.heard(err, func(ctx context.Context) error {
		_, err := s.js.Stream(ctx, name)
		return err
	})
	switch {
	case err == nil:
		return name, st.CachedInfo(), nil
	case errors.Is(err, natsjs.ErrStreamNotFound):
		if !s.cfg.AutoProvision {
			return "", nil, fmt.Errorf("%w: stream %q does not exist; create it with subjects including %q, or set autoProvision to true", ErrNoStream, name, topic)
		}
		return name, nil, nil
	default:
		return "", nil, fmt.Errorf("look up stream %q: %w%s", name, err, s.unanswered(err))
	}
}

// heard tells api whether JetStream answered a look-up that failed with
// err, or succeeded; again makes the same request, to ask again while none
// does.
func (s *streams) heard(err error, again func(context.Context) error) {
	s.api.heard(err, again)
}

// unanswered explains a look-up that JetStream did not answer. nats.go's
// bare "no responders" says nothing of where the request went: with a wrong
// domain or apiPrefix, or a leaf node whose hub is away, nothing takes the
// API requests, and retrying alone does not help.
func (s *streams) unanswered(err error) string {
	if errors.Is(err, nats.ErrNoResponders) {
		return "; " + s.api.why
	}
	return unanswered(err)
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
	// JetStream answers the create of a stream that exists with this very
	// config as if it made it. So that the log says "created" once when
	// several publishes in this process find no stream at once, their
	// creates take turns, and each looks again first.
	done := editStream(name)
	if existing, lerr := s.js.Stream(ctx, name); lerr == nil {
		done()
		return s.madeMeanwhile(ctx, existing.CachedInfo(), name, topic)
	}
	st, err := s.js.CreateStream(ctx, cfg)
	done()
	if err == nil {
		s.infof("created stream %q with subjects %v for topic %q, which no stream held", name, subjects, topic)
		return st.CachedInfo(), nil
	}
	// Another process may have created it meanwhile.
	if existing, lerr := s.js.Stream(ctx, name); lerr == nil {
		return s.madeMeanwhile(ctx, existing.CachedInfo(), name, topic)
	}
	// Or a stream for a wildcard that covers the topic, such as one created
	// for a subscription to orders.> while this publish to orders.new looked.
	if found, lerr := s.js.StreamNameBySubject(ctx, topic); lerr == nil {
		if st, lerr := s.js.Stream(ctx, found); lerr == nil && covers(st.CachedInfo().Config.Subjects, topic) {
			return s.instead(st.CachedInfo(), name, topic), nil
		}
	}
	// Or, for a wildcard topic, one stream that holds subjects it covers,
	// such as one created for a publish to orders.new while this
	// subscription to orders.> looked: the topic takes their place.
	if info := s.coveredBy(ctx, topic); info != nil {
		return s.extend(ctx, s.instead(info, name, topic), topic)
	}
	return nil, fmt.Errorf("create stream %q for subjects %v: %w%s", name, subjects, err, createRefusal(ctx, s.js, err, cfg, s.cfg.Name != ""))
}

// madeMeanwhile takes stream name, which another publish or subscription
// created after topic's look-up found none, adding topic to its subjects
// when it holds it not.
func (s *streams) madeMeanwhile(ctx context.Context, existing *natsjs.StreamInfo, name, topic string) (*natsjs.StreamInfo, error) {
	info := s.instead(existing, name, topic)
	if s.takes(info.Config, topic) {
		return info, nil
	}
	return s.extend(ctx, info, topic)
}

func (s *streams) extend(ctx context.Context, info *natsjs.StreamInfo, topic string) (*natsjs.StreamInfo, error) {
	if m := info.Config.Mirror; m != nil {
		// JetStream lets a mirror hold no subjects of its own: adding the
		// topic cannot work, whatever autoProvision says.
		return nil, fmt.Errorf("%w: stream %q is a mirror of %q that copies only %v, not %q, and a mirror can hold no subjects of its own; set streamName to a stream that holds the topic, or change the mirror's filter",
			ErrNoStream, info.Config.Name, m.Name, sourceFilters(*m), topic)
	}
	if !s.cfg.AutoProvision {
		return nil, fmt.Errorf("%w: stream %q has subjects %v, none of which includes %q; add it to the stream, or set autoProvision to true",
			ErrNoStream, info.Config.Name, info.Config.Subjects, topic)
	}
	name := info.Config.Name
	defer editStream(name)()
	// Read again: the subjects may have changed since info was read.
	current, err := s.read(ctx, name, topic)
	for try := 1; err == nil && !covers(current.Config.Subjects, topic); try++ {
		if try > extendTries {
			return nil, fmt.Errorf("add subject %q to stream %q: other instances changing its subjects at the same time undid it %d times; publish again", topic, name, extendTries)
		}
		if try > 1 {
			// JetStream has no compare-and-set for a stream's config:
			// another replica that read the subjects before this change
			// and wrote them back with its own topic undid it. A pause
			// sets the replicas apart.
			if err := sleepCtx(ctx, rand.N(extendBackOff)); err != nil {
				return nil, fmt.Errorf("add subject %q to stream %q: %w", topic, name, err)
			}
		}
		cfg := withTopic(current.Config, topic)
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return s.extendRefused(ctx, name, topic, err)
		}
		s.infof("added subject %q to stream %q, whose subjects are now %v", topic, name, cfg.Subjects)
		current, err = s.read(ctx, name, topic)
	}
	return current, err
}

// sendAgain reports whether a publish to topic that JetStream answered, on
// its try-th send, with no stream or with a stream changed from what is
// known (see streamChanged) should be sent again, and forgets what is known
// of the topic's stream if so. JetStream stored nothing of it. An operator
// may have deleted or replaced the stream since it was looked up; or, with
// autoProvision, another instance that extended the same stream at the same
// time wrote its subjects back without this topic, having read them before
// this one added it. JetStream has no compare-and-set for a stream's config,
// and that instance may do so again while this one adds the topic back:
// after the second send, a random pause of growing length sets the two
// apart. Each send looks the stream up again, so a stream that cannot take
// the topic ends the tries with an error that says why. A stream that was
// looked up afresh, holds the topic and still did not answer has lost its
// subscription to it (see rehear).
func (s *streams) sendAgain(ctx context.Context, topic string, try int) bool {
	if try >= extendTries {
		return false
	}
	name, known := s.cached(topic)
	s.forget(topic)
	if try == 1 {
		return true
	}
	if known && s.cfg.AutoProvision {
		s.rehear(ctx, name, topic)
	}
	return sleepCtx(ctx, rand.N(time.Duration(try)*extendBackOff)) == nil
}

// rehearSubject stands in for the only subject of a stream while rehear
// takes it out: JetStream gives a stream without subjects its name as one.
const rehearSubject = "_dapr_pubsub.rehear"

// rehear subscribes stream name to topic again, when its config holds the
// topic and yet nats-server does not take what is published to it: two
// updates of its subjects applied at once, one of them without the subject
// that holds the topic, can leave the server unsubscribed from it for as
// long as it runs. Taking that subject out and putting it back subscribes
// the stream to it again. A stream that does not hold the topic any more is
// left as it is: the next send looks it up again.
func (s *streams) rehear(ctx context.Context, name, topic string) {
	defer editStream(name)()
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return
	}
	held := st.CachedInfo().Config
	deaf := subjectsHolding(held.Subjects, topic)
	if len(deaf) == 0 {
		return
	}
	without := held
	without.Subjects = slices.DeleteFunc(slices.Clone(held.Subjects), func(s string) bool { return slices.Contains(deaf, s) })
	if len(without.Subjects) == 0 {
		without.Subjects = []string{rehearSubject + "." + name}
	}
	if _, err := s.js.UpdateStream(ctx, without); err != nil {
		s.warnf("stream %q holds %q among its subjects, but nats-server does not take what is published to it; taking %v out, to put it back, failed: %v", name, topic, deaf, err)
		return
	}
	if _, err := s.js.UpdateStream(ctx, held); err != nil {
		s.warnf("stream %q held %q among its subjects, but nats-server did not take what was published to it; %v was taken out, and putting it back failed: %v; the next publish to the topic adds it again", name, topic, deaf, err)
		return
	}
	s.warnf("stream %q held %q among its subjects, but nats-server did not take what was published to it, as happens when two updates of the stream's subjects are applied at once; %v was taken out and put back, which subscribes the stream to it again", name, topic, deaf)
}

// subjectsHolding returns those of subjects that hold topic: the topic
// itself, or a wildcard that covers it.
func subjectsHolding(subjects []string, topic string) []string {
	return slices.DeleteFunc(slices.Clone(subjects), func(s string) bool { return !metadata.SubjectCovers(s, topic) })
}

// extendRefused handles JetStream's refusal to add topic to stream name.
// When another stream holds the topic already, as when a rolling update sets
// streamName to a stream that exists while the old replicas' stream holds
// the topic, that stream takes the topic's messages, as in create, and the
// log says so: failing every publish and subscription of the new replicas
// would stop the app. Otherwise the error names the streams in the way.
func (s *streams) extendRefused(ctx context.Context, name, topic string, err error) (*natsjs.StreamInfo, error) {
	if !isAPIError(err, errCodeSubjectOverlap) {
		return nil, fmt.Errorf("add subject %q to stream %q: %w", topic, name, err)
	}
	if found, lerr := s.js.StreamNameBySubject(ctx, topic); lerr == nil && found != name {
		if st, lerr := s.js.Stream(ctx, found); lerr == nil && covers(st.CachedInfo().Config.Subjects, topic) {
			return s.instead(st.CachedInfo(), name, topic), nil
		}
	}
	in := overlapping(ctx, s.js, []string{topic}, name)
	if len(in) == 0 {
		in = []string{"another stream"}
	}
	return nil, fmt.Errorf("add subject %q to stream %q: %w; %q overlaps the subjects of %s: keep those subjects and the topic in one stream (nats stream edit), and set streamName to it",
		topic, name, err, topic, strings.Join(in, ", "))
}

// read returns the info of stream name, which topic needs.
func (s *streams) read(ctx context.Context, name, topic string) (*natsjs.StreamInfo, error) {
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("add subject %q to stream %q: %w", topic, name, err)
	}
	return st.CachedInfo(), nil
}

// withTopic is cfg with topic among its subjects. A wildcard topic replaces
// the subjects it covers, which JetStream would refuse as overlapping:
// orders.> takes the place of orders.new.
func withTopic(cfg natsjs.StreamConfig, topic string) natsjs.StreamConfig {
	cfg.Subjects = slices.DeleteFunc(slices.Clone(cfg.Subjects), func(s string) bool { return metadata.SubjectCovers(topic, s) })
	cfg.Subjects = append(cfg.Subjects, topic)
	return cfg
}

// sleepCtx waits d, or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// instead notes, for a stream that takes topic although this instance
// meant to create stream name, where it differs from the stream* settings,
// as for one found existing; and, when it is not the stream streamName
// names, that streamName is not followed for the topic. It returns info.
func (s *streams) instead(info *natsjs.StreamInfo, name, topic string) *natsjs.StreamInfo {
	s.noteDifferences(info.Config)
	if s.cfg.Name == "" || info.Config.Name == name || s.log == nil {
		return info
	}
	s.mu.Lock()
	noted := s.strayed[topic]
	s.strayed[topic] = true
	s.mu.Unlock()
	if !noted {
		s.log.Warnf("streamName asks for stream %q, but stream %q holds topic %q (its subjects %v), so JetStream refuses %q with it: the topic's messages go to %q; to gather the topic in %q, move its subject there with nats stream edit, or set streamName to %q",
			name, info.Config.Name, topic, info.Config.Subjects, name, info.Config.Name, name, info.Config.Name)
	}
	return info
}

// infof logs what auto-provisioning changed, so that an operator can see
// where a topic's messages go.
func (s *streams) infof(format string, args ...any) {
	if s.log != nil {
		s.log.Infof(format, args...)
	}
}

func (s *streams) warnf(format string, args ...any) {
	if s.log != nil {
		s.log.Warnf(format, args...)
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
	defer editStream(name)()
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

// holds reports whether a stream of config c takes the messages of topic:
// its subjects cover the topic, or it is a mirror that copies them.
func holds(c natsjs.StreamConfig, topic string) bool {
	return covers(c.Subjects, topic) || mirrors(c, topic)
}

// mirrors reports whether c is a mirror that copies the messages of topic.
// A mirror has no subjects of its own: it copies what its origin stores,
// all of it unless its filter or subject transforms name what it copies.
// The origin's subjects are not read, since it may be in another domain or
// account; a consumer on the mirror filters the topic either way.
func mirrors(c natsjs.StreamConfig, topic string) bool {
	if c.Mirror == nil {
		return false
	}
	return copies(*c.Mirror, topic)
}

// takes reports whether a stream of config c is where this instance finds
// the messages of topic: it holds them, or, with autoProvision off, it takes
// them from streams it sources (an aggregate), which subscriptions read.
// With autoProvision on, the topic is added to such a stream instead, as
// to any other that does not cover it.
func (s *streams) takes(c natsjs.StreamConfig, topic string) bool {
	return holds(c, topic) || (!s.cfg.AutoProvision && len(sourcesOf(c, topic)) > 0)
}

// sourcesOf names the streams that c sources the messages of topic from.
func sourcesOf(c natsjs.StreamConfig, topic string) []string {
	var names []string
	for _, src := range c.Sources {
		if src != nil && copies(*src, topic) {
			names = append(names, src.Name)
		}
	}
	return names
}

// sourcedOnly says why a stream of config c, which takes topic only from
// the streams it sources, stores no publish of it; nil when its subjects
// take the topic, or it does not source it.
func sourcedOnly(c natsjs.StreamConfig, topic string) error {
	names := sourcesOf(c, topic)
	if holds(c, topic) || len(names) == 0 {
		return nil
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
	}
	return fmt.Errorf("%w: stream %q takes topic %q only from the streams it sources (%s), and JetStream stores a publish only in a stream whose subjects include it; publish through a Component with streamName %q, or without streamName (the stream that holds the topic takes it), and keep streamName %q for the subscriptions that read it",
		ErrStreamTakesNoPublish, c.Name, topic, strings.Join(quoted, ", "), names[0], c.Name)
}

// copies reports whether a mirror or source m copies messages of topic:
// every subject of its origin, unless its filter or subject transforms name
// what it copies.
func copies(m natsjs.StreamSource, topic string) bool {
	filters := sourceFilters(m)
	return len(filters) == 0 || covers(filters, topic)
}

// sourceFilters are the subjects that what a mirror or source m copies has
// in its stream, or none when it copies every subject of its origin as it
// is. A transform's destination is the subject the copy gets; one with a
// mapping function ({{wildcard(1)}}, $1) is not worked out, and counts as
// copying anything.
func sourceFilters(m natsjs.StreamSource) []string {
	var filters []string
	if m.FilterSubject != "" {
		filters = append(filters, m.FilterSubject)
	}
	for _, tr := range m.SubjectTransforms {
		subject := tr.Destination
		if subject == "" {
			subject = tr.Source
		}
		if subject == "" || strings.ContainsAny(subject, "{$") {
			return nil
		}
		filters = append(filters, subject)
	}
	return filters
}

// covers reports whether a stream with subjects holds every message of
// topic, even where no one subject takes all of it.
func covers(subjects []string, topic string) bool {
	return metadata.SubjectsCover(subjects, topic)
}
