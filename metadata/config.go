package metadata

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	kitmd "github.com/dapr/kit/metadata"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults applied when a field is absent.
const (
	DefaultName            = "dapr-nats-jetstream"
	DefaultReconnectWait   = 2 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultAckWait         = 30 * time.Second
	DefaultMaxAckPending   = 1000
	DefaultMaxInFlight     = 100
	DefaultDuplicateWindow = 2 * time.Minute
)

// natsSchemes are the schemes of NATS server URLs.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// Config is the validated form of a component's metadata.
type Config struct {
	Connection Connection
	Stream     Stream
	Publish    Publish
	Consumer   Consumer

	// consumerProps holds the component's consumer keys, canonically named,
	// so a subscription can override some of them and be validated as a whole.
	consumerProps map[string]string
}

// Connection holds how to reach and authenticate to NATS.
type Connection struct {
	// URL is one server URL or a comma-separated list of them, as given,
	// except that commas within user information are percent-encoded:
	// nats.go splits the list at every comma.
	URL            string
	Name           string
	Token          string
	User           string
	Password       string
	JWT            string
	SeedKey        string
	NKeySeed       string
	CredsFile      string
	TLSClientCert  string
	TLSClientKey   string
	TLSCAFile      string
	Domain         string
	APIPrefix      string
	ReconnectWait  time.Duration
	ConnectTimeout time.Duration
}

// Stream holds which stream carries the topics and how to create it.
type Stream struct {
	// Name is the stream to use. Empty means: the stream whose subjects cover
	// the topic, or, when provisioning, a stream named after the topic.
	Name            string
	AutoProvision   bool
	Subjects        []string
	Storage         jetstream.StorageType
	Replicas        int
	MaxAge          time.Duration
	MaxMsgs         int64
	MaxBytes        int64
	DuplicateWindow time.Duration
	Retention       jetstream.RetentionPolicy
	Discard         jetstream.DiscardPolicy
	// MaxMsgSize and MaxMsgsPerSubject are -1 for no limit.
	MaxMsgSize        int32
	MaxMsgsPerSubject int64
	Compression       jetstream.StoreCompression
	// Placement is nil when neither cluster nor tags are set.
	Placement *jetstream.Placement
	// Given lists the stream* keys the metadata set, so that an existing
	// stream is compared only with what was asked for.
	Given []string
}

// Publish holds how messages are published.
type Publish struct {
	// BulkAtomic makes each BulkPublish an atomic batch: every entry is
	// stored, or none. A request's own bulkPublishAtomic overrides it.
	BulkAtomic bool
}

// Consumer holds the settings of the durable (or ephemeral) pull consumer
// made for each subscribed topic.
type Consumer struct {
	// DurableBase is durableName, else queueGroupName, else consumerID. The
	// durable of a topic is this base plus the topic. Empty means ephemeral.
	DurableBase string
	// StartAtSubscribe is true when no deliver field was given: a new
	// consumer starts with the messages stored from the moment the
	// subscription was requested, so nothing published after it is missed.
	StartAtSubscribe bool
	DeliverPolicy    jetstream.DeliverPolicy
	StartSequence    uint64
	StartTime        time.Time
	AckPolicy        jetstream.AckPolicy
	AckWait          time.Duration
	MaxDeliver       int
	BackOff          []time.Duration
	NakDelay         time.Duration
	MaxAckPending    int
	// MaxAckPendingGiven is whether the metadata set maxAckPending. If
	// not, MaxAckPending is the default, which a lower JetStream limit
	// takes the place of, as JetStream does for a consumer that sets none.
	MaxAckPendingGiven bool
	MaxInFlight        int
	Replicas           int
	MemoryStorage      bool
	// RateLimit is in bits per second; 0 means unlimited.
	RateLimit   uint64
	Heartbeat   time.Duration
	FlowControl bool
	Parallel    bool
	// DeadLetterSubject is where a message goes when its last allowed
	// delivery fails; TopicToken in it stands for the message's subject.
	// Empty means no dead letters: such a message is logged.
	DeadLetterSubject string
	// PriorityPolicy is none, pinned or overflow; the durable then has one
	// priority group, PriorityGroup.
	PriorityPolicy jetstream.PriorityPolicy
	// PinnedTTL is how long a pinned replica may go without pulling
	// before another takes over.
	PinnedTTL time.Duration
	// MinPending, with overflow, makes this replica a standby: it gets
	// messages only while the consumer has at least this many pending.
	MinPending int64
}

// PriorityGroup is the one priority group of a durable with a priority
// policy.
const PriorityGroup = "dapr"

// DefaultPinnedTTL is pinnedTTL when priorityPolicy is pinned.
const DefaultPinnedTTL = 30 * time.Second

// TopicToken, in deadLetterSubject, stands for the subject of the message.
const TopicToken = "{topic}"

// DeadLetterFor is the dead-letter subject of a message on subject.
func (c Consumer) DeadLetterFor(subject string) string {
	return strings.ReplaceAll(c.DeadLetterSubject, TopicToken, subject)
}

// Parse decodes and validates component metadata. Every problem found is
// reported, joined into one error; each names its field and what is accepted.
func Parse(props map[string]string) (*Config, error) {
	p, err := decode(props)
	if err != nil {
		return nil, err
	}
	cfg := &Config{consumerProps: pick(props, consumerFields)}
	var errs []error
	cfg.Connection, err = parseConnection(&p)
	errs = append(errs, err)
	cfg.Stream, err = parseStream(&p)
	errs = append(errs, err)
	cfg.Publish = parsePublish(&p)
	cfg.Consumer, err = parseConsumer(&p)
	errs = append(errs, err)
	if err == nil {
		errs = append(errs, workQueueConsumer(cfg.Stream, cfg.Consumer, p))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// ForSubscription returns the consumer settings for one subscription: the
// component's, overridden by the consumer keys in the subscription metadata.
// If the subscription sets any of deliverPolicy, deliverAll, startSequence or
// startTime, the component's values for those four are dropped first; if it
// sets priorityPolicy, so are the component's pinnedTTL and minPending where
// they do not apply to that policy.
func (c *Config) ForSubscription(sub map[string]string) (Consumer, error) {
	override := pick(sub, consumerFields)
	if len(override) == 0 {
		return c.Consumer, nil
	}
	if err := sameKeyTwice(sub, consumerFields); err != nil {
		return Consumer{}, fmt.Errorf("subscription metadata: %w", err)
	}
	merged := make(map[string]string, len(c.consumerProps)+len(override))
	for k, v := range c.consumerProps {
		merged[k] = v
	}
	for _, k := range deliverFields {
		if _, ok := override[k]; ok {
			for _, d := range deliverFields {
				delete(merged, d)
			}
			break
		}
	}
	for k, v := range override {
		merged[k] = v
	}
	// A subscription's own priorityPolicy takes the Component's pinnedTTL
	// and minPending only where they apply to it; the subscription could
	// not remove them otherwise.
	if policy, ok := override["priorityPolicy"]; ok {
		policy = choice(policy)
		for field, appliesTo := range map[string]string{"pinnedTTL": "pinned", "minPending": "overflow"} {
			if _, own := override[field]; !own && policy != appliesTo {
				delete(merged, field)
			}
		}
	}
	p, err := decode(merged)
	if err != nil {
		return Consumer{}, fmt.Errorf("subscription metadata: %w", err)
	}
	consumer, err := parseConsumer(&p)
	if err != nil {
		return Consumer{}, fmt.Errorf("subscription metadata: %w", err)
	}
	return consumer, nil
}

// sameKeyTwice reports each of keys that props spells more than once (say
// maxInFlight and MAXINFLIGHT), which pick would otherwise choose between at
// random.
func sameKeyTwice(props map[string]string, keys []string) error {
	var errs []error
	for _, want := range keys {
		var spelled []string
		for k := range props {
			if strings.EqualFold(k, want) {
				spelled = append(spelled, k)
			}
		}
		if len(spelled) > 1 {
			slices.Sort(spelled)
			errs = append(errs, conflict("are the same key spelled twice", "keep one of them", spelled...))
		}
	}
	return errors.Join(errs...)
}

// pick returns the entries of props whose key (in any case) is one of keys,
// renamed to the canonical spelling.
func pick(props map[string]string, keys []string) map[string]string {
	out := map[string]string{}
	for k, v := range props {
		for _, want := range keys {
			if strings.EqualFold(k, want) {
				out[want] = v
			}
		}
	}
	return out
}

// decode runs Dapr's metadata decoder. When it fails, each key is decoded on
// its own so the error can name every bad field and what it accepts.
func decode(props map[string]string) (Properties, error) {
	var p Properties
	outOfRange := secondsOutOfRange(props)
	for k, err := range emptyTypedValues(props) {
		if outOfRange == nil {
			outOfRange = map[string]error{}
		}
		outOfRange[k] = err
	}
	var err error
	if len(outOfRange) == 0 {
		if err = kitmd.DecodeMetadata(props, &p); err == nil {
			return p, nil
		}
	}
	return p, fieldDecodeErrors(props, outOfRange, err)
}

// fieldDecodeErrors decodes each key of props on its own, to name every
// field that cannot be read; outOfRange holds the errors found before
// decoding, and whole the decoder's error for all of props.
func fieldDecodeErrors(props map[string]string, outOfRange map[string]error, whole error) error {
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var errs []error
	seen := map[string]string{}
	for _, k := range keys {
		if prev, dup := seen[strings.ToLower(k)]; dup {
			errs = append(errs, conflict("are the same key spelled twice", "keep one of them", prev, k))
			continue
		}
		seen[strings.ToLower(k)] = k
		if err, ok := outOfRange[k]; ok {
			errs = append(errs, err)
			continue
		}
		var one Properties
		if kitmd.DecodeMetadata(map[string]string{k: props[k]}, &one) != nil {
			name, accepted := describeField(k)
			errs = append(errs, fieldErr(name, props[k], "cannot be read", accepted))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%w: %v", ErrInvalid, whole))
	}
	return errors.Join(errs...)
}

// maxSeconds is the largest whole number of seconds a duration holds.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// secondsOutOfRange finds the duration fields of props given as a whole
// number of seconds too large for a duration. Dapr's decoder would multiply
// them into nanoseconds and wrap around, to a negative or a shorter
// duration, silently.
func secondsOutOfRange(props map[string]string) map[string]error {
	var out map[string]error
	for k, v := range props {
		name, t := fieldType(k)
		if t != typeDuration && t != typeDurations {
			continue
		}
		for _, part := range strings.Split(v, ",") {
			n, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
			if err != nil || (n <= maxSeconds && n >= -maxSeconds) {
				continue
			}
			if out == nil {
				out = map[string]error{}
			}
			out[k] = fieldErr(name, v, "is out of range",
				fmt.Sprintf("a duration such as 30s or 24h, or a whole number of seconds, at most %d seconds (292 years)", maxSeconds))
			break
		}
	}
	return out
}

// emptyTypedValues finds the keys of props that are not text and whose
// value is empty. Dapr's decoder reads "" as 0 or false, which is not the
// field's default (autoProvision "" would turn provisioning off), and an
// error about the 0 would show a value nobody typed.
func emptyTypedValues(props map[string]string) map[string]error {
	var out map[string]error
	for k, v := range props {
		name, t := fieldType(k)
		if v != "" || t == nil || t.Kind() == reflect.String || t == reflect.TypeFor[[]string]() {
			continue
		}
		if out == nil {
			out = map[string]error{}
		}
		_, accepted := describeField(name)
		out[k] = fieldErr(name, "", "is empty", accepted+"; remove the key for the default")
	}
	return out
}

var (
	typeDuration  = reflect.TypeFor[time.Duration]()
	typeDurations = reflect.TypeFor[[]time.Duration]()
)

// fieldType finds the canonical name of a metadata key and the type it
// decodes into, without the pointer; nil for an unknown key.
func fieldType(key string) (string, reflect.Type) {
	for f := range reflect.TypeFor[Properties]().Fields() {
		name := f.Tag.Get("mapstructure")
		if !strings.EqualFold(name, key) {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		return name, ft
	}
	return key, nil
}

// describeField finds the canonical name of a metadata key and words what
// its type accepts.
func describeField(key string) (string, string) {
	name, ft := fieldType(key)
	switch {
	case ft == nil:
		return name, ""
	case ft == typeDuration:
		return name, "a duration such as 500ms, 30s or 5m, or a whole number of seconds"
	case ft == typeDurations:
		return name, "a comma-separated list of durations such as 1s,5s,30s"
	case ft.Kind() == reflect.Bool:
		return name, "true or false"
	case ft.Kind() == reflect.Uint64:
		return name, "a whole number, 0 or more"
	case ft.Kind() >= reflect.Int && ft.Kind() <= reflect.Int64:
		return name, "a whole number"
	default:
		return name, "text"
	}
}

func parseConnection(p *Properties) (Connection, error) {
	c := Connection{
		URL: p.NatsURL, Name: p.Name, Token: p.Token, User: p.User, Password: p.Password,
		JWT: p.JWT, SeedKey: p.SeedKey, NKeySeed: p.NKeySeed, CredsFile: p.CredsFile,
		TLSClientCert: p.TLSClientCert, TLSClientKey: p.TLSClientKey, TLSCAFile: p.TLSCAFile,
		Domain: p.Domain, APIPrefix: p.APIPrefix,
		ReconnectWait: p.ReconnectWait, ConnectTimeout: p.ConnectTimeout,
	}
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	var err error
	c.URL, err = parseServerURLs(c.URL)
	add(err)
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.ReconnectWait < 0 {
		add(fieldErr("reconnectWait", c.ReconnectWait.String(), "must not be negative", "a duration such as 2s"))
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = DefaultReconnectWait
	}
	if c.ConnectTimeout < 0 {
		add(fieldErr("connectTimeout", c.ConnectTimeout.String(), "must not be negative", "a duration such as 5s"))
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	add(checkAuth(c))
	if c.Domain != "" && !ValidName(c.Domain) {
		// nats.go puts it into the API subjects as one token: $JS.<domain>.API.
		add(fieldErr("domain", c.Domain, "is not a JetStream domain", "the domain of the JetStream servers (their jetstream.domain): letters, digits, - and _, without spaces, dots or wildcards"))
	}
	if c.APIPrefix != "" {
		if err := ValidSubject(strings.TrimSuffix(c.APIPrefix, "."), false); err != nil {
			add(fieldErr("apiPrefix", c.APIPrefix, "is not a subject prefix: "+err.Error(), "a subject prefix such as JS.acc.API, where the account imports the JetStream API"))
		}
	}
	if c.Domain != "" && c.APIPrefix != "" {
		add(conflict("both choose the JetStream API subject prefix", "set domain for a JetStream domain, or apiPrefix for an imported API, not both", "domain", "apiPrefix"))
	}
	return c, errors.Join(errs...)
}

// parseServerURLs checks each URL of a natsURL list and returns the list with
// the commas in user information percent-encoded. Errors never show what may
// be a user or password.
func parseServerURLs(list string) (string, error) {
	var errs []error
	if strings.TrimFunc(list, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) == "" {
		errs = append(errs, fieldErr("natsURL", "", "is required", "a NATS URL such as nats://localhost:4222, or a comma-separated list of them"))
	}
	servers := splitServerURLs(list)
	shown := redactServerURLs(servers)
	for i, raw := range servers {
		u := strings.TrimSpace(raw)
		if u == "" {
			continue
		}
		parsed, err := url.Parse(u)
		if err != nil || parsed.Host == "" || !slices.Contains(natsSchemes, parsed.Scheme) {
			value := strings.TrimSpace(shown[i])
			problem := "is not a NATS server URL"
			accepted := "nats://host:port, tls://host:port, ws://host:port or wss://host:port, comma-separated for several servers"
			if value != u {
				// What was hidden may be a user or password, and may be
				// what does not parse.
				problem += " (what may be a user or password is hidden)"
				accepted += "; percent-encode , @ / ? # % or a space in a user or password: %2C %40 %2F %3F %23 %25 %20"
			}
			errs = append(errs, fieldErr("natsURL", value, problem, accepted))
			continue
		}
		servers[i] = escapeUserInfoCommas(raw)
	}
	return strings.Join(servers, ","), errors.Join(errs...)
}

// checkAuth checks the authentication fields: at most one identity, each
// complete, optionally with a TLS client certificate.
func checkAuth(c Connection) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	if (c.JWT == "") != (c.SeedKey == "") {
		add(conflict("must be set together: the user JWT and the seed that signs it", "set both, or use credsFile", "jwt", "seedKey"))
	}
	if (c.User == "") != (c.Password == "") {
		add(conflict("must be set together", "set both, or neither", "user", "password"))
	}
	if identities := identityFields(c); len(identities) > 1 {
		add(conflict("each give NATS a user identity and only one can be used", "keep one of them (TLS client certificates combine with any)", identities...))
	}
	for _, seed := range []struct{ field, value string }{{"seedKey", c.SeedKey}, {"nkeySeed", c.NKeySeed}} {
		if seed.value != "" && !strings.HasPrefix(strings.TrimSpace(seed.value), "SU") {
			add(fieldErr(seed.field, seed.value, "is not an NKey user seed", "a user seed, which starts with SU"))
		}
	}
	if (c.TLSClientCert == "") != (c.TLSClientKey == "") {
		add(conflict("must be set together", "set both paths, or neither", "tls_client_cert", "tls_client_key"))
	}
	return errors.Join(errs...)
}

// identityFields names the user identities the fields give NATS.
func identityFields(c Connection) []string {
	identities := []string{}
	if c.Token != "" {
		identities = append(identities, "token")
	}
	if c.User != "" || c.Password != "" {
		identities = append(identities, "user")
	}
	if c.JWT != "" || c.SeedKey != "" {
		identities = append(identities, "jwt")
	}
	if c.NKeySeed != "" {
		identities = append(identities, "nkeySeed")
	}
	if c.CredsFile != "" {
		identities = append(identities, "credsFile")
	}
	return identities
}

func parsePublish(p *Properties) Publish {
	var pub Publish
	givenBool(&pub.BulkAtomic, p.BulkPublishAtomic)
	return pub
}

func parseStream(p *Properties) (Stream, error) {
	s := Stream{
		Name: p.StreamName, AutoProvision: true, Storage: jetstream.FileStorage, Replicas: 1,
		MaxMsgs: -1, MaxBytes: -1, DuplicateWindow: DefaultDuplicateWindow,
	}
	given(&s.MaxAge, p.StreamMaxAge)
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error

	if s.Name != "" && !ValidName(s.Name) {
		add(fieldErr("streamName", s.Name, "is not a valid stream name", "letters, digits, - and _, without spaces, dots, *, >, / or \\, at most 255 characters"))
	}
	givenBool(&s.AutoProvision, p.AutoProvision)
	s.Subjects, err = parseStreamSubjects(p.StreamSubjects)
	add(err)
	if len(s.Subjects) > 0 && s.Name == "" {
		add(conflict("streamSubjects needs the stream it configures", "set streamName too", "streamSubjects", "streamName"))
	}
	switch choice(p.StreamStorage) {
	case "", "file":
	case "memory":
		s.Storage = jetstream.MemoryStorage
	default:
		add(fieldErr("streamStorage", p.StreamStorage, "is not a storage type", "file or memory"))
	}
	if given(&s.Replicas, p.StreamReplicas) && (s.Replicas < 1 || s.Replicas > 5) {
		add(fieldErr("streamReplicas", fmt.Sprint(s.Replicas), "is out of range", "1 to 5"))
	}
	add(parseStreamLimits(p, &s))
	add(parseStreamPolicies(p, &s))
	s.Given = givenStreamKeys(p)
	return s, errors.Join(errs...)
}

// parseStreamSubjects checks streamSubjects, split at its commas, against
// what JetStream refuses in the subjects of a stream it creates.
func parseStreamSubjects(list []string) ([]string, error) {
	const accepted = "NATS subjects such as orders.> or TWITTERCLONE.*, comma-separated, each once and none overlapping another"
	var subjects []string
	var errs []error
	for _, subj := range list {
		subj = strings.TrimSpace(subj)
		if subj == "" && len(list) > 1 {
			errs = append(errs, fieldErr("streamSubjects", strings.Join(list, ","), "has an entry that is empty (a leading, trailing or double comma)", accepted))
			continue
		}
		if err := ValidSubject(subj, true); err != nil {
			errs = append(errs, fieldErr("streamSubjects", subj, err.Error(), accepted))
			continue
		}
		if problem := reservedSubject(subj); problem != "" {
			errs = append(errs, fieldErr("streamSubjects", subj, problem, accepted))
			continue
		}
		for _, prev := range subjects {
			switch {
			case prev == subj:
				errs = append(errs, fieldErr("streamSubjects", subj, "is given more than once", accepted))
			case SubjectsCollide(prev, subj):
				errs = append(errs, fieldErr("streamSubjects", subj, fmt.Sprintf("overlaps %s: JetStream refuses a stream whose subjects overlap; keep the wider one", prev), accepted))
			default:
				continue
			}
			break
		}
		subjects = append(subjects, subj)
	}
	return subjects, errors.Join(errs...)
}

// reservedSubject says why JetStream refuses subj in a stream that
// acknowledges publishes, or returns "".
func reservedSubject(subj string) string {
	for _, api := range []string{"$JS.>", "$JSC.>", "$NRG.>"} {
		if SubjectsCollide(subj, api) && !SubjectCovers("$JS.EVENT.>", subj) {
			return "overlaps JetStream's own API subjects ($JS.>, $JSC.>, $NRG.>), which JetStream refuses in a stream that acknowledges publishes"
		}
	}
	if SubjectsCollide(subj, "$SYS.>") && !SubjectCovers("$SYS.ACCOUNT.>", subj) {
		return "overlaps the system account's subjects ($SYS.>), which JetStream refuses in a stream that acknowledges publishes"
	}
	return ""
}

// minStreamWindow is the shortest age limit and duplicate window JetStream
// accepts.
const minStreamWindow = 100 * time.Millisecond

// parseStreamLimits reads the age, message and byte limits, and the
// duplicate window, which the age limit bounds.
func parseStreamLimits(p *Properties, s *Stream) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	if s.MaxAge < 0 {
		add(fieldErr("streamMaxAge", s.MaxAge.String(), "must not be negative", "a duration such as 24h, or 0 for no limit"))
	} else if s.MaxAge > 0 && s.MaxAge < minStreamWindow {
		add(fieldErr("streamMaxAge", s.MaxAge.String(), "is too short", "100ms or more, or 0 for no limit"))
	}
	limit := func(field string, v *int64, dst *int64) {
		if v == nil {
			return
		}
		if *v == 0 || *v < -1 {
			add(fieldErr(field, fmt.Sprint(*v), "is out of range", "a positive number, or -1 for no limit"))
			return
		}
		*dst = *v
	}
	limit("streamMaxMsgs", p.StreamMaxMsgs, &s.MaxMsgs)
	limit("streamMaxBytes", p.StreamMaxBytes, &s.MaxBytes)
	add(parseDuplicateWindow(p.StreamDuplicateWindow, s))
	if s.MaxAge > 0 && s.DuplicateWindow > s.MaxAge {
		add(conflict("the duplicate window cannot be longer than the age limit", "shorten streamDuplicateWindow or lengthen streamMaxAge", "streamDuplicateWindow", "streamMaxAge"))
	}
	return errors.Join(errs...)
}

// workQueueConsumer checks the component's consumer settings against
// workqueue retention, which JetStream allows only with consumers that ack
// explicitly and start at the first message: a workqueue stream holds only
// what no consumer has acknowledged yet.
func workQueueConsumer(s Stream, c Consumer, p Properties) error {
	if s.Retention != jetstream.WorkQueuePolicy {
		return nil
	}
	var errs []error
	if c.AckPolicy != jetstream.AckExplicitPolicy {
		errs = append(errs, conflict("streamRetention workqueue needs consumers that acknowledge each message", "use ackPolicy explicit", "streamRetention", "ackPolicy"))
	}
	if !c.StartAtSubscribe && c.DeliverPolicy != jetstream.DeliverAllPolicy {
		field := "deliverPolicy"
		switch {
		case p.StartSequence != nil:
			field = "startSequence"
		case p.StartTime != nil:
			field = "startTime"
		}
		errs = append(errs, conflict("streamRetention workqueue needs consumers that start at the first message the stream holds", "remove "+field+" (or use deliverPolicy all)", "streamRetention", field))
	}
	return errors.Join(errs...)
}

// parseStreamPolicies reads retention, discard, the per-message limits,
// compression and placement.
func parseStreamPolicies(p *Properties, s *Stream) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	s.MaxMsgSize, s.MaxMsgsPerSubject = -1, -1
	switch choice(p.StreamRetention) {
	case "", "limits":
	case "interest":
		s.Retention = jetstream.InterestPolicy
	case "workqueue":
		s.Retention = jetstream.WorkQueuePolicy
	default:
		add(fieldErr("streamRetention", p.StreamRetention, "is not a retention policy", "limits, interest or workqueue"))
	}
	switch choice(p.StreamDiscard) {
	case "", "old":
	case "new":
		s.Discard = jetstream.DiscardNew
	default:
		add(fieldErr("streamDiscard", p.StreamDiscard, "is not a discard policy", "old (drop the oldest messages when full) or new (refuse new ones)"))
	}
	if v := p.StreamMaxMsgSize; v != nil {
		if *v == 0 || *v < -1 || *v > math.MaxInt32 {
			add(fieldErr("streamMaxMsgSize", fmt.Sprint(*v), "is out of range", "a size in bytes from 1 to 2147483647, or -1 for no limit"))
		} else {
			s.MaxMsgSize = int32(*v)
		}
	}
	if v := p.StreamMaxMsgsPerSubject; v != nil {
		if *v == 0 || *v < -1 {
			add(fieldErr("streamMaxMsgsPerSubject", fmt.Sprint(*v), "is out of range", "a positive number, or -1 for no limit"))
		} else {
			s.MaxMsgsPerSubject = *v
		}
	}
	switch choice(p.StreamCompression) {
	case "", "none":
	case "s2":
		s.Compression = jetstream.S2Compression
	default:
		add(fieldErr("streamCompression", p.StreamCompression, "is not a compression", "none or s2"))
	}
	var tags []string
	for _, t := range p.StreamPlacementTags {
		if t = strings.TrimSpace(t); t != "" {
			tags = append(tags, t)
		}
	}
	if cluster := strings.TrimSpace(p.StreamPlacementCluster); cluster != "" || len(tags) > 0 {
		s.Placement = &jetstream.Placement{Cluster: cluster, Tags: tags}
	}
	return errors.Join(errs...)
}

// givenStreamKeys lists the stream* keys set in p.
func givenStreamKeys(p *Properties) []string {
	var given []string
	for _, f := range []struct {
		key string
		set bool
	}{
		{"streamSubjects", len(p.StreamSubjects) > 0},
		{"streamStorage", p.StreamStorage != ""}, {"streamReplicas", p.StreamReplicas != nil},
		{"streamMaxAge", p.StreamMaxAge != nil}, {"streamMaxMsgs", p.StreamMaxMsgs != nil},
		{"streamMaxBytes", p.StreamMaxBytes != nil}, {"streamDuplicateWindow", p.StreamDuplicateWindow != nil},
		{"streamRetention", p.StreamRetention != ""}, {"streamDiscard", p.StreamDiscard != ""},
		{"streamMaxMsgSize", p.StreamMaxMsgSize != nil}, {"streamMaxMsgsPerSubject", p.StreamMaxMsgsPerSubject != nil},
		{"streamCompression", p.StreamCompression != ""},
		{"streamPlacementCluster", p.StreamPlacementCluster != ""}, {"streamPlacementTags", len(p.StreamPlacementTags) > 0},
	} {
		if f.set {
			given = append(given, f.key)
		}
	}
	return given
}

func parseConsumer(p *Properties) (Consumer, error) {
	c := Consumer{
		DurableBase: durableBase(p),
		AckPolicy:   jetstream.AckExplicitPolicy, AckWait: DefaultAckWait, MaxDeliver: -1,
		MaxAckPending: DefaultMaxAckPending, BackOff: p.BackOff,
	}
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	for _, base := range []struct{ field, value string }{{"durableName", p.DurableName}, {"queueGroupName", p.QueueGroupName}} {
		if base.value != "" && strings.TrimSpace(base.value) == "" {
			add(fieldErr(base.field, base.value, "is blank", "a name such as orders-worker, or remove the key to use the next of durableName, queueGroupName and consumerID"))
		}
	}
	add(parseDeliver(p, &c))
	add(parseAck(p, &c))
	add(parseInFlight(p, &c))
	if given(&c.Replicas, p.Replicas) && (c.Replicas < 0 || c.Replicas > 5) {
		add(fieldErr("replicas", fmt.Sprint(c.Replicas), "is out of range", "0 (as the stream) to 5"))
	}
	givenBool(&c.MemoryStorage, p.MemoryStorage)
	given(&c.RateLimit, p.RateLimit)
	if given(&c.Heartbeat, p.Heartbeat) && c.Heartbeat != 0 && (c.Heartbeat < 500*time.Millisecond || c.Heartbeat > 30*time.Second) {
		add(fieldErr("heartbeat", c.Heartbeat.String(), "is out of range", "500ms to 30s, or 0 for the default"))
	}
	givenBool(&c.FlowControl, p.FlowControl)
	add(parseConcurrency(p, &c))
	add(parsePriority(p, &c))
	add(parseDeadLetter(p, &c))
	return c, errors.Join(errs...)
}

// parseDuplicateWindow reads streamDuplicateWindow into s, whose MaxAge is
// read already. JetStream has no window of 0: it would take the default, so
// 0 is refused rather than taken for "off".
func parseDuplicateWindow(v *time.Duration, s *Stream) error {
	switch {
	case v == nil:
		if s.MaxAge > 0 && s.MaxAge < s.DuplicateWindow {
			// As the server does: an unset window is capped at the age limit.
			s.DuplicateWindow = s.MaxAge
		}
	case *v < 0:
		return fieldErr("streamDuplicateWindow", v.String(), "must not be negative", "a duration such as 2m")
	case *v < minStreamWindow:
		return fieldErr("streamDuplicateWindow", v.String(), "is too short",
			"100ms or more, such as 2m; JetStream always drops duplicates within a window, so remove the key for the default (2m, or streamMaxAge when shorter)")
	default:
		s.DuplicateWindow = *v
	}
	return nil
}

// given copies a value the metadata set into dst, and reports whether there
// was one: an absent key leaves the default in dst.
func given[T any](dst *T, v *T) bool {
	if v == nil {
		return false
	}
	*dst = *v
	return true
}

// givenBool is given for the metadata's strict booleans.
func givenBool(dst *bool, v *Bool) {
	if v != nil {
		*dst = bool(*v)
	}
}

// durableBase is durableName, else queueGroupName, else consumerID.
func durableBase(p *Properties) string {
	switch {
	case p.DurableName != "":
		return p.DurableName
	case p.QueueGroupName != "":
		return p.QueueGroupName
	}
	return p.ConsumerID
}

// parseAck reads how deliveries are acknowledged and redelivered: ackPolicy,
// ackWait, maxDeliver, backOff and nakDelay.
func parseAck(p *Properties, c *Consumer) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	switch choice(p.AckPolicy) {
	case "", "explicit":
	case "all":
		c.AckPolicy = jetstream.AckAllPolicy
	case "none":
		c.AckPolicy = jetstream.AckNonePolicy
	default:
		add(fieldErr("ackPolicy", p.AckPolicy, "is not an ack policy", "explicit, all or none"))
	}
	if given(&c.AckWait, p.AckWait) && c.AckWait <= 0 {
		add(fieldErr("ackWait", c.AckWait.String(), "must be positive", "a duration such as 30s"))
	}
	if given(&c.MaxDeliver, p.MaxDeliver) {
		if c.MaxDeliver == 0 {
			c.MaxDeliver = -1
		}
		if c.MaxDeliver < -1 {
			add(fieldErr("maxDeliver", fmt.Sprint(c.MaxDeliver), "is out of range", "1 or more, or -1 for no limit"))
		}
	}
	for _, d := range c.BackOff {
		if d <= 0 {
			add(fieldErr("backOff", d.String(), "contains a duration that is not positive", "positive durations such as 1s,5s,30s"))
			break
		}
	}
	if len(c.BackOff) > 0 && c.MaxDeliver > 0 && c.MaxDeliver < len(c.BackOff) {
		add(conflict(fmt.Sprintf("maxDeliver (%d) cannot be less than the number of backOff steps (%d)", c.MaxDeliver, len(c.BackOff)),
			"raise maxDeliver or shorten backOff", "maxDeliver", "backOff"))
	}
	if given(&c.NakDelay, p.NakDelay) && c.NakDelay < 0 {
		add(fieldErr("nakDelay", c.NakDelay.String(), "must not be negative", "a duration such as 1s, or 0 to redeliver at once"))
	}
	return errors.Join(errs...)
}

// parseInFlight reads how many messages may be out at once: maxAckPending on
// the server, maxInFlight in this component. Without maxInFlight, it follows
// the ack policy and maxAckPending. The ack policy must be read first.
func parseInFlight(p *Properties, c *Consumer) error {
	var errs []error
	c.MaxAckPendingGiven = given(&c.MaxAckPending, p.MaxAckPending)
	if c.MaxAckPendingGiven && (c.MaxAckPending == 0 || c.MaxAckPending < -1) {
		errs = append(errs, fieldErr("maxAckPending", fmt.Sprint(c.MaxAckPending), "is out of range", "1 or more, or -1 for no limit"))
	}
	switch {
	case given(&c.MaxInFlight, p.MaxInFlight):
		errs = append(errs, checkMaxInFlight(*c))
	case c.AckPolicy == jetstream.AckAllPolicy:
		c.MaxInFlight = 1
	case c.MaxAckPending > 0:
		c.MaxInFlight = min(DefaultMaxInFlight, c.MaxAckPending)
	default:
		c.MaxInFlight = DefaultMaxInFlight
	}
	return errors.Join(errs...)
}

// checkMaxInFlight checks a maxInFlight the metadata gave against
// maxAckPending and the ack policy.
func checkMaxInFlight(c Consumer) error {
	switch {
	case c.MaxInFlight < 1:
		return fieldErr("maxInFlight", fmt.Sprint(c.MaxInFlight), "is out of range", "1 or more")
	case c.MaxAckPending > 0 && c.MaxInFlight > c.MaxAckPending:
		return conflict(fmt.Sprintf("maxInFlight (%d) cannot exceed maxAckPending (%d): the server would never hand out that many", c.MaxInFlight, c.MaxAckPending),
			"lower maxInFlight or raise maxAckPending", "maxInFlight", "maxAckPending")
	case c.AckPolicy == jetstream.AckAllPolicy && c.MaxInFlight > 1:
		return conflict("ackPolicy all acknowledges every earlier message too, so only one message may be in flight",
			"set maxInFlight to 1 or use ackPolicy explicit", "ackPolicy", "maxInFlight")
	}
	return nil
}

// parseConcurrency reads whether handlers run one at a time or in parallel.
func parseConcurrency(p *Properties, c *Consumer) error {
	switch choice(p.Concurrency) {
	case "", "single":
	case "parallel":
		c.Parallel = true
		if c.AckPolicy == jetstream.AckAllPolicy {
			return conflict("parallel handlers would acknowledge messages still being processed by others",
				"use ackPolicy explicit with concurrency parallel", "concurrency", "ackPolicy")
		}
	default:
		return fieldErr("concurrency", p.Concurrency, "is not a concurrency mode", "single or parallel")
	}
	return nil
}

// parseDeadLetter reads deadLetterSubject.
func parseDeadLetter(p *Properties, c *Consumer) error {
	dl := strings.TrimSpace(p.DeadLetterSubject)
	if dl == "" {
		return nil
	}
	c.DeadLetterSubject = dl
	if err := validDeadLetterSubject(dl); err != nil {
		return fieldErr("deadLetterSubject", dl, err.Error(), "a NATS subject without wildcards, such as dead.{topic}, where {topic} stands for the subject of the failed message")
	}
	return nil
}

// parsePriority reads priorityPolicy and the settings that go with it.
func parsePriority(p *Properties, c *Consumer) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	switch choice(p.PriorityPolicy) {
	case "", "none":
	case "pinned":
		c.PriorityPolicy, c.PinnedTTL = jetstream.PriorityPolicyPinned, DefaultPinnedTTL
	case "overflow":
		c.PriorityPolicy = jetstream.PriorityPolicyOverflow
	default:
		add(fieldErr("priorityPolicy", p.PriorityPolicy, "is not a priority policy", "pinned (one replica at a time) or overflow (standbys with minPending)"))
	}
	if p.PinnedTTL != nil {
		switch {
		case c.PriorityPolicy != jetstream.PriorityPolicyPinned:
			add(conflict("pinnedTTL applies only to priorityPolicy pinned", "set priorityPolicy pinned, or remove pinnedTTL", "pinnedTTL", "priorityPolicy"))
		case *p.PinnedTTL < 2*time.Second:
			add(fieldErr("pinnedTTL", p.PinnedTTL.String(), "is too short", "2s or more: a pinned replica renews its pull about every second"))
		case c.Heartbeat > 0 && *p.PinnedTTL <= 2*c.Heartbeat:
			add(conflict(fmt.Sprintf("pinnedTTL (%s) must be longer than a pull request, which lasts 2 × heartbeat (%s)", *p.PinnedTTL, 2*c.Heartbeat),
				"lengthen pinnedTTL or shorten heartbeat", "pinnedTTL", "heartbeat"))
		default:
			c.PinnedTTL = *p.PinnedTTL
		}
	}
	if p.MinPending != nil {
		switch {
		case c.PriorityPolicy != jetstream.PriorityPolicyOverflow:
			add(conflict("minPending applies only to priorityPolicy overflow", "set priorityPolicy overflow, or remove minPending", "minPending", "priorityPolicy"))
		case *p.MinPending < 1:
			add(fieldErr("minPending", fmt.Sprint(*p.MinPending), "is out of range", "1 or more"))
		default:
			c.MinPending = *p.MinPending
		}
	}
	if c.PriorityPolicy != jetstream.PriorityPolicyNone && c.DurableBase == "" {
		add(conflict("priorityPolicy needs one durable that the replicas share", "set consumerID, durableName or queueGroupName", "priorityPolicy", "consumerID"))
	}
	return errors.Join(errs...)
}

func validDeadLetterSubject(tmpl string) error {
	probe := strings.ReplaceAll(tmpl, TopicToken, "topic")
	if strings.ContainsAny(probe, "{}") {
		return errors.New("has a template other than {topic}")
	}
	return ValidSubject(probe, false)
}

// startTime is a Unix time in seconds, and must be below 1e11.
//
// From lastSendableStartTime on, a start time cannot reach the server at all:
// the consumer configuration is sent as JSON, whose RFC 3339 times have
// four-digit years, so every attempt to create the consumer would fail.
//
// The bound is lower than that because a time in the wrong unit passes it: as
// seconds, 1e11 is 5138-11-16, later than any start time anyone means, while
// every time after 1973-03-03 is 1e11 or more in milliseconds (1e14 or more in
// microseconds, 1e17 or more in nanoseconds). So a value of 1e11 or more is
// taken for a time in a smaller unit, and the error gives it in seconds.
const (
	maxStartTime          = 1e11 - 1     // 5138-11-16T09:46:39Z
	lastSendableStartTime = 253402300799 // 9999-12-31T23:59:59Z
)

// startTimeUnit names the unit that a startTime above maxStartTime was most
// likely given in, and returns its value in seconds (which is below
// maxStartTime, and at least 1e8: 1973-03-03).
func startTimeUnit(v int64) (string, int64) {
	switch {
	case v >= 1e17:
		return "nanoseconds", v / 1e9
	case v >= 1e14:
		return "microseconds", v / 1e6
	default:
		return "milliseconds", v / 1e3
	}
}

// parseDeliver infers the deliver policy from deliverPolicy, deliverAll,
// startSequence and startTime, and rejects combinations that contradict.
func parseDeliver(p *Properties, c *Consumer) error {
	if err := checkStart(p); err != nil {
		return err
	}
	policy, err := deliverPolicyName(p.DeliverPolicy)
	if err != nil {
		return err
	}
	switch {
	case p.StartSequence != nil:
		return deliverFromSequence(p, c, policy)
	case p.StartTime != nil:
		c.StartTime = time.Unix(*p.StartTime, 0).UTC()
		c.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		if policy != "" && policy != "time" {
			return conflict(fmt.Sprintf("deliverPolicy %q contradicts startTime", p.DeliverPolicy),
				"remove deliverPolicy (startTime alone means time) or set it to time", "deliverPolicy", "startTime")
		}
	case p.DeliverAll != nil && bool(*p.DeliverAll):
		c.DeliverPolicy = jetstream.DeliverAllPolicy
		if policy != "" && policy != "all" {
			return conflict(fmt.Sprintf("deliverAll contradicts deliverPolicy %q", p.DeliverPolicy), "keep one of them", "deliverAll", "deliverPolicy")
		}
	default:
		return deliverByPolicy(p, c, policy)
	}
	return nil
}

// checkStart checks startSequence and startTime, and that at most one of
// them and deliverAll chooses where a new consumer starts.
func checkStart(p *Properties) error {
	var errs []error
	if p.StartSequence != nil && *p.StartSequence == 0 {
		errs = append(errs, fieldErr("startSequence", "0", "is out of range", "a stream sequence number, 1 or more"))
	}
	if p.StartTime != nil {
		errs = append(errs, checkStartTime(*p.StartTime))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	deliverAll := p.DeliverAll != nil && bool(*p.DeliverAll)
	switch {
	case p.StartSequence != nil && p.StartTime != nil:
		return conflict("each choose where a new consumer starts", "keep one of them", "startSequence", "startTime")
	case deliverAll && p.StartSequence != nil:
		return conflict("deliverAll starts at the first message, startSequence elsewhere", "keep one of them", "deliverAll", "startSequence")
	case deliverAll && p.StartTime != nil:
		return conflict("deliverAll starts at the first message, startTime elsewhere", "keep one of them", "deliverAll", "startTime")
	}
	return nil
}

// checkStartTime rejects a startTime that is not positive, or that was most
// likely given in a unit smaller than seconds.
func checkStartTime(v int64) error {
	switch {
	case v <= 0:
		return fieldErr("startTime", fmt.Sprint(v), "is out of range", "a Unix time in seconds, such as 1700000000")
	case v > maxStartTime:
		unit, secs := startTimeUnit(v)
		when := "the year 5138 or later"
		if v > lastSendableStartTime {
			when = "after the year 9999"
		}
		return fieldErr("startTime", fmt.Sprint(v), fmt.Sprintf("looks like %s, not seconds (as seconds it is %s)", unit, when),
			fmt.Sprintf("a Unix time in seconds, such as %d (%s)", secs, time.Unix(secs, 0).UTC().Format(time.RFC3339)))
	}
	return nil
}

// deliverPolicyName is the canonical name of a deliverPolicy value, of the
// several spellings each policy accepts; "" when none was given.
func deliverPolicyName(v string) (string, error) {
	switch policy := choice(v); policy {
	case "", "all", "last", "new":
		return policy, nil
	case "sequence", "by_start_sequence", "bystartsequence":
		return "sequence", nil
	case "time", "by_start_time", "bystarttime":
		return "time", nil
	case "last_per_subject", "lastpersubject":
		return "last_per_subject", nil
	}
	return "", fieldErr("deliverPolicy", v, "is not a deliver policy", "all, last, new, sequence, time or last_per_subject")
}

// deliverFromSequence starts at startSequence, which policy, if given, must
// agree with.
func deliverFromSequence(p *Properties, c *Consumer, policy string) error {
	c.StartSequence = *p.StartSequence
	c.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
	switch {
	case policy == "" || policy == "sequence":
	case policy == "all" && c.StartSequence == 1:
		// "all" and "from sequence 1" are the same thing. The server
		// rejects a start sequence next to DeliverAllPolicy.
		c.DeliverPolicy = jetstream.DeliverAllPolicy
		c.StartSequence = 0
	default:
		return conflict(fmt.Sprintf("deliverPolicy %q contradicts startSequence %d", p.DeliverPolicy, c.StartSequence),
			"remove deliverPolicy (startSequence alone means sequence) or set it to sequence", "deliverPolicy", "startSequence")
	}
	return nil
}

// deliverByPolicy applies a deliver policy given without a start: none
// means from the moment of subscribing.
func deliverByPolicy(p *Properties, c *Consumer, policy string) error {
	switch policy {
	case "":
		c.StartAtSubscribe = true
		c.DeliverPolicy = jetstream.DeliverByStartTimePolicy
	case "all":
		c.DeliverPolicy = jetstream.DeliverAllPolicy
	case "last":
		c.DeliverPolicy = jetstream.DeliverLastPolicy
	case "new":
		c.DeliverPolicy = jetstream.DeliverNewPolicy
	case "last_per_subject":
		c.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
	case "sequence":
		return fieldErr("deliverPolicy", p.DeliverPolicy, "needs a start sequence", "set startSequence too, or drop deliverPolicy and set only startSequence")
	case "time":
		return fieldErr("deliverPolicy", p.DeliverPolicy, "needs a start time", "set startTime too, or drop deliverPolicy and set only startTime")
	}
	return nil
}

// RedactURL hides the user information (user, password or token) of each URL
// in a natsURL list, and what looks like a piece of user information that a
// comma cut off from its "@".
func RedactURL(raw string) string {
	return strings.Join(redactServerURLs(splitServerURLs(raw)), ",")
}

// splitServerURLs splits a natsURL list into its URLs as written, blanks and
// empty ones included, so that joining them with commas gives the list back.
// A comma ends a URL except within its user information: from "scheme://" to
// the first "@" of the authority, a comma belongs to the user or password,
// which is what someone who writes such a password means.
func splitServerURLs(list string) []string {
	var out []string
	for {
		end := serverURLEnd(list)
		out = append(out, list[:end])
		if end == len(list) {
			return out
		}
		list = list[end+1:]
	}
}

// serverURLEnd is the index of the comma that ends the first URL of list, or
// len(list).
func serverURLEnd(list string) int {
	comma := strings.IndexByte(list, ',')
	if comma < 0 {
		return len(list)
	}
	scheme := strings.Index(list, "://")
	if scheme < 0 || scheme > comma {
		return comma
	}
	authority := scheme + len("://")
	// The authority ends at "/", "?" or "#", which also stops the search at
	// the "://" of a next URL.
	at := strings.IndexAny(list[authority:], "@/?#")
	if at < 0 || list[authority+at] != '@' || authority+at < comma {
		return comma
	}
	if next := strings.IndexByte(list[authority+at:], ','); next >= 0 {
		return authority + at + next
	}
	return len(list)
}

// redactServerURLs hides the user information of each URL of a split list.
//
// Every valid URL starts with its scheme, so a URL followed by pieces without
// one (empty ones aside) was probably cut by a comma that is not where its
// user information ends: a password holding "/", "?" or "#" before a comma, or
// "@" after one. Which of its parts are password then cannot be told (a
// password piece such as "1234" looks like a port), so everything after the
// scheme is hidden, and so are the pieces that follow.
func redactServerURLs(urls []string) []string {
	out := slices.Clone(urls)
	for head := 0; head < len(urls); {
		next, followed := head+1, false
		for ; next < len(urls) && !startsWithScheme(urls[next]); next++ {
			if strings.TrimSpace(urls[next]) != "" {
				followed = true
				out[next] = "***"
			}
		}
		if followed {
			if i := strings.Index(urls[head], "://"); i >= 0 {
				out[head] = urls[head][:i+len("://")] + "***"
			} else if strings.TrimSpace(urls[head]) != "" {
				out[head] = "***"
			}
		} else {
			out[head] = redactServerURL(urls[head])
		}
		head = next
	}
	return out
}

// startsWithScheme reports whether u, blanks aside, starts with the scheme
// of a NATS server URL and "://".
func startsWithScheme(u string) bool {
	scheme, _, found := strings.Cut(strings.TrimSpace(u), "://")
	return found && slices.Contains(natsSchemes, strings.ToLower(scheme))
}

// redactServerURL hides the user information of one URL.
func redactServerURL(u string) string {
	scheme, rest := "", u
	if i := strings.Index(u, "://"); i >= 0 {
		scheme, rest = u[:i+len("://")], u[i+len("://"):]
	}
	// Hiding up to the last "@", past the authority too, hides a password
	// holding "@" or "/" as well.
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		return scheme + "***@" + rest[at+1:]
	}
	authority := rest
	if end := strings.IndexAny(rest, "/?#"); end >= 0 {
		authority = rest[:end]
	}
	if looksLikeUserInfo(authority) {
		return scheme + "***" + rest[len(authority):]
	}
	return u
}

// looksLikeUserInfo reports whether an authority without "@" may be the
// "user:password" of a URL rather than its host[:port]: something follows a
// colon, and it is not a port number.
func looksLikeUserInfo(authority string) bool {
	if strings.HasPrefix(authority, "[") {
		if end := strings.IndexByte(authority, ']'); end >= 0 {
			port, bracketed := strings.CutPrefix(authority[end+1:], ":")
			return authority[end+1:] != "" && (!bracketed || !isPort(port))
		}
	}
	_, port, found := strings.Cut(authority, ":")
	return found && !isPort(port)
}

func isPort(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// escapeUserInfoCommas percent-encodes the commas in the user information of
// a server URL that url.Parse accepts: nats.go splits the list it is given at
// every comma, and decodes the user information of each URL.
func escapeUserInfoCommas(u string) string {
	i := strings.Index(u, "://")
	if i < 0 {
		return u
	}
	start := i + len("://")
	authority := u[start:]
	if end := strings.IndexAny(authority, "/?#"); end >= 0 {
		authority = authority[:end]
	}
	at := strings.LastIndexByte(authority, '@')
	if at < 0 {
		return u
	}
	return u[:start] + strings.ReplaceAll(authority[:at], ",", "%2C") + u[start+at:]
}

// choice is the canonical spelling of a value chosen from a list: lower
// case, without the spaces a templated or quoted YAML value may carry.
func choice(v string) string { return strings.ToLower(strings.TrimSpace(v)) }
