package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// What JetStream answers when a stream that discards new messages reached a
// limit: nats-server's ErrMaxMsgs, ErrMaxBytes and ErrMaxMsgsPerSubject.
const (
	refusedMaxMsgs           = "maximum messages exceeded"
	refusedMaxBytes          = "maximum bytes exceeded"
	refusedMaxMsgsPerSubject = "maximum messages per subject exceeded"
)

// refusals explains JetStream's refusals of a publish that name neither the
// stream nor the limit it reached. It reads the stream's settings once, when
// first needed: a bulk may have many entries refused for one reason.
type refusals struct {
	ctx     context.Context
	streams *streams
	topic   string
	read    bool
	info    *natsjs.StreamInfo
	err     error
}

func newRefusals(ctx context.Context, s *streams, topic string) *refusals {
	return &refusals{ctx: ctx, streams: s, topic: topic}
}

// explain returns err with the stream, its limit and the fix added, when err
// is a refusal that lacks them.
func (r *refusals) explain(err error) error {
	switch limit := fullLimit(err); {
	case isAPIError(err, errCodeInsufficientResources), isAPIError(err, errCodeAccountResourcesExceeded):
		return outOfStorage(err)
	case waitedForAck(err), errors.Is(err, errAckOverdue):
		return r.unanswered(err)
	case isAPIError(err, errCodeSealed):
		return r.shut(err)
	case isNoStream(err):
		return r.deaf(err)
	case errors.Is(err, natsjs.ErrStreamMessageExceedsMaximum):
		if info := r.stream(); info != nil {
			return fmt.Errorf("%w: %s", err, tooLarge(info))
		}
	case limit != "":
		if info := r.stream(); info != nil {
			return fmt.Errorf("%w: %s", err, full(info, limit, r.topic))
		}
	}
	return err
}

// stream is the stream that stores the topic now, or nil when none does or
// it cannot be read.
func (r *refusals) stream() *natsjs.StreamInfo {
	info, _ := r.current()
	return info
}

// current reads the stream that stores the topic now, once: see
// streams.current.
func (r *refusals) current() (*natsjs.StreamInfo, error) {
	if !r.read {
		// The publish may have ended for want of time: the look-up gets its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), apiTimeout)
		defer cancel()
		r.info, r.err = r.streams.current(ctx, r.topic)
		r.read = true
	}
	return r.info, r.err
}

// shut explains err, a publish refused or unanswered, when the topic's
// stream takes no publish (sealed, or no_ack), and forgets the stream, so
// that the next publish reads it again.
func (r *refusals) shut(err error) error {
	info := r.stream()
	if info == nil {
		return err
	}
	why := takesNoPublish(info.Config)
	if why == nil {
		return err
	}
	r.streams.forget(r.topic)
	return fmt.Errorf("%w: %w", why, err)
}

// unanswered explains a publish that JetStream did not acknowledge in time.
// When no stream holds the topic any more, no stream could answer, and
// nats.go waited only because something else subscribes to the topic with
// core NATS (nats sub, a plain NATS app): without it, the publish would have
// been refused at once as having no responders.
func (r *refusals) unanswered(err error) error {
	sentTo, _ := r.streams.cached(r.topic)
	if _, rerr := r.current(); !errors.Is(rerr, natsjs.ErrStreamNotFound) {
		return mayBeStored(r.shut(err))
	}
	gone := "no stream holds the topic any more"
	if sentTo != "" {
		gone = fmt.Sprintf("stream %q, which held the topic, is gone or no longer holds it", sentTo)
	}
	return fmt.Errorf("%w: %s, so no stream stored the message or answered, and a core NATS subscriber on the topic kept the publish from being refused at once; the next publish looks for the topic's stream again (autoProvision creates it)", err, gone)
}

// deaf explains a publish that no stream answered, when the topic's stream
// holds it among its subjects: nats-server does not take what is published
// to the subject (see streams.rehear).
func (r *refusals) deaf(err error) error {
	info := r.stream()
	if info == nil {
		return err
	}
	deaf := subjectsHolding(info.Config.Subjects, r.topic)
	if len(deaf) == 0 {
		return err
	}
	name := info.Config.Name
	return fmt.Errorf("%w: stream %q holds %q among its subjects (%s), but nats-server does not take what is published to it: two updates of the stream's subjects applied at once can leave the server unsubscribed from one of them; take %s out of the stream and put it back (nats stream edit %s), restart nats-server, or set autoProvision to true, which does that",
		err, name, r.topic, strings.Join(deaf, ", "), strings.Join(deaf, ", "), name)
}

// mayBeStored adds to err, a publish sent that got no acknowledgement in
// time while a stream may have stored it, that it may be stored: an app
// told only of a deadline takes the message for lost, and a retry without
// its id stores it twice. An err that says why already (a stream with
// no_ack stores without answering) is left as it is.
func mayBeStored(err error) error {
	if !errors.Is(err, errAckOverdue) || errors.Is(err, ErrStreamTakesNoPublish) {
		return err
	}
	return fmt.Errorf("%w; JetStream may have stored the message without its acknowledgement arriving in time, so it may be stored or not; publishing it again with the same CloudEvent id or msgId stores it once", err)
}

// takesNoPublish says why a stream of config c cannot take a publish, or
// nil when it can. A mirror takes none: streamName may name one for an app
// that subscribes to the copy. Nor does a counter stream take a Dapr
// publish, which is a message, not an increment.
func takesNoPublish(c natsjs.StreamConfig) error {
	switch {
	case c.Sealed:
		return fmt.Errorf("%w: stream %q is sealed: JetStream stores nothing more in it, and a sealed stream cannot be unsealed; keep what it holds elsewhere if needed, then delete it (nats stream rm %s), so that a new stream can take the topic (autoProvision creates one), or publish to a topic another stream holds",
			ErrStreamTakesNoPublish, c.Name, c.Name)
	case c.Mirror != nil:
		return fmt.Errorf("%w: stream %q is a mirror of %q: JetStream stores nothing published to a mirror, only what it copies from its origin; publish through a Component with streamName %q, or without streamName (the stream that holds the topic takes it), and keep streamName %q for the subscriptions that read the copy",
			ErrStreamTakesNoPublish, c.Name, c.Mirror.Name, c.Mirror.Name, c.Name)
	case c.AllowMsgCounter:
		return fmt.Errorf("%w: stream %q is a counter stream (allow_msg_counter): JetStream stores in it only increments (a Nats-Incr header), which it adds up per subject, not messages, and the setting cannot be turned off; publish the topic to another stream: move its subject out of %q (nats stream edit), or set streamName to a stream that holds it",
			ErrStreamTakesNoPublish, c.Name, c.Name)
	case c.NoAck:
		return fmt.Errorf("%w: stream %q has no_ack set: JetStream does not acknowledge what is published to it, so a publish cannot be confirmed, and a retry would store the message twice; let it acknowledge publishes (nats stream edit %s --ack)",
			ErrStreamTakesNoPublish, c.Name, c.Name)
	}
	return nil
}

// waitedForAck reports a publish that got no acknowledgement in time.
func waitedForAck(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, natsjs.ErrAsyncPublishTimeout)
}

func tooLarge(info *natsjs.StreamInfo) string {
	return fmt.Sprintf("stream %q takes messages of at most %d bytes, headers included (its max_msg_size, which streamMaxMsgSize sets when the component creates the stream); send a smaller message, or raise the stream's limit",
		info.Config.Name, info.Config.MaxMsgSize)
}

// fullLimit returns which limit of a stream that discards new messages err
// says was reached, or "".
func fullLimit(err error) string {
	var apiErr *natsjs.APIError
	if !errors.As(err, &apiErr) {
		return ""
	}
	for _, limit := range []string{refusedMaxMsgsPerSubject, refusedMaxMsgs, refusedMaxBytes} {
		if strings.Contains(apiErr.Description, limit) {
			return limit
		}
	}
	return ""
}

// full says which limit a stream that discards new messages reached, how
// messages leave it, and what can be done.
func full(info *natsjs.StreamInfo, limit, topic string) string {
	c := info.Config
	var reached string
	switch limit {
	case refusedMaxMsgs:
		reached = fmt.Sprintf("stream %q is full: it holds at most %s (its max_msgs, which streamMaxMsgs sets when the component creates the stream)",
			c.Name, plural(c.MaxMsgs, "message"))
	case refusedMaxBytes:
		reached = fmt.Sprintf("stream %q is full: it holds at most %d bytes (its max_bytes, which streamMaxBytes sets when the component creates the stream)",
			c.Name, c.MaxBytes)
	default:
		reached = fmt.Sprintf("stream %q is full for topic %q: it holds at most %s of each subject (its max_msgs_per_subject, which streamMaxMsgsPerSubject sets when the component creates the stream)",
			c.Name, topic, plural(c.MaxMsgsPerSubject, "message"))
	}
	return reached + ", and its discard policy new refuses new messages until some leave it, " + leaving(c) +
		"; raise the limit (nats stream edit), remove messages (nats stream purge), or give a new stream streamDiscard old, to drop the oldest messages instead"
}

// leaving says how messages leave a stream of config c.
func leaving(c natsjs.StreamConfig) string {
	var how string
	switch c.Retention {
	case natsjs.WorkQueuePolicy:
		how = "as subscribers acknowledge them"
	case natsjs.InterestPolicy:
		how = "as every consumer acknowledges them"
	default:
		if c.MaxAge <= 0 {
			return "which happens only when removed, since it has no max_age"
		}
	}
	if c.MaxAge > 0 {
		if how != "" {
			how += ", or "
		}
		how += "as they reach its max_age of " + c.MaxAge.String()
	}
	return how
}

func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// The JetStream error codes of refusals that name no setting to change.
const (
	errCodeAccountResourcesExceeded natsjs.ErrorCode = 10002
	errCodeInsufficientResources    natsjs.ErrorCode = 10023
	errCodeMaximumStreams           natsjs.ErrorCode = 10027
	errCodeMemoryExceeded           natsjs.ErrorCode = 10028
	errCodeStorageExceeded          natsjs.ErrorCode = 10047
	errCodeSubjectOverlap           natsjs.ErrorCode = 10065
	errCodeReplicasNotSupported     natsjs.ErrorCode = 10074
	errCodeSealed                   natsjs.ErrorCode = 10109
	errCodeMaxBytesRequired         natsjs.ErrorCode = 10113
	errCodeMaxAckPendingExcess      natsjs.ErrorCode = 10121
)

// outOfStorage explains a publish refused because JetStream has no storage
// left for the stream, which the server's answer ("insufficient resources")
// does not say.
func outOfStorage(err error) error {
	var where string
	switch {
	case isAPIError(err, errCodeInsufficientResources):
		where = "nats-server has no JetStream storage left for the stream (its max_file_store or max_memory_store, or the account's JetStream limits)"
	case isAPIError(err, errCodeAccountResourcesExceeded):
		where = "nats-server has no JetStream storage left for the account: the stream's messages reached the account's JetStream limits (max_file or max_mem in the account's jetstream block, or nsc's --js-disk-storage and --js-mem-storage)"
	default:
		return err
	}
	return fmt.Errorf("%w: %s; remove messages, bound the streams (streamMaxBytes, streamMaxAge or streamMaxMsgs when the component creates them), or raise those limits", err, where)
}

// createRefusal explains why JetStream refused to create stream cfg, when
// its answer alone does not say what to change; "" when there is nothing to
// add.
// named says that streamName named the stream.
func createRefusal(ctx context.Context, js natsjs.JetStream, err error, cfg natsjs.StreamConfig, named bool) string {
	var apiErr *natsjs.APIError
	if !errors.As(err, &apiErr) {
		return ""
	}
	switch apiErr.ErrorCode {
	case errCodeSubjectOverlap:
		return overlapRefusal(ctx, js, cfg, named)
	case errCodeReplicasNotSupported:
		return fmt.Sprintf("; streamReplicas is %d, and nats-server runs alone, without a JetStream cluster: set streamReplicas to 1, or run a cluster of at least %d servers", cfg.Replicas, cfg.Replicas)
	case errCodeStorageExceeded, errCodeMemoryExceeded:
		store := "max_file_store"
		if cfg.Storage == natsjs.MemoryStorage {
			store = "max_memory_store"
		}
		if cfg.MaxBytes > 0 {
			return fmt.Sprintf("; nats-server cannot set aside the stream's max_bytes of %d bytes (streamMaxBytes): lower streamMaxBytes, or raise the server's %s or the account's JetStream limits", cfg.MaxBytes, store)
		}
		return fmt.Sprintf("; nats-server has no JetStream storage left (its %s, or the account's JetStream limits): remove messages or streams, or raise those limits", store)
	case errCodeMaximumStreams:
		return fmt.Sprintf("; the account holds %s, its max_streams: remove unused streams, set streamName so that topics share one stream, or raise the account's limit", streamsAllowed(ctx, js))
	case errCodeMaxBytesRequired:
		return "; the account's JetStream limits require every stream to have a max_bytes: set streamMaxBytes"
	}
	return ""
}

// streamsAllowed words the account's limit of streams.
func streamsAllowed(ctx context.Context, js natsjs.JetStream) string {
	info, err := js.AccountInfo(ctx)
	if err != nil || info.Limits.MaxStreams < 0 {
		return "as many streams as it may"
	}
	return "at most " + plural(int64(info.Limits.MaxStreams), "stream")
}

// explainConsumerRefusal explains why JetStream refused to create want,
// the consumer of topic on the stream of config stream, or why the durable
// of that name cannot serve.
func explainConsumerRefusal(ctx context.Context, js natsjs.JetStream, err error, stream natsjs.StreamConfig, topic string, want natsjs.ConsumerConfig) error {
	name := stream.Name
	switch {
	case errors.Is(err, natsjs.ErrNotPullConsumer):
		return &Error{Op: "subscribe to", Topic: topic, Kind: KindRejected, Err: fmt.Errorf(
			"consumer %q on stream %q is a push consumer (it has a deliver subject), and this component pulls: %w; delete it (nats consumer rm %s %s) so that it is created again, or set another consumerID",
			want.Durable, name, err, name, want.Durable)}
	case isAPIError(err, natsjs.JSErrCodeMaximumConsumersLimit):
		return fmt.Errorf("%w: %s, and each consumerID takes one per topic, as does each subscription without one; remove the consumers no app uses (nats consumer ls %s, then nats consumer rm %s NAME), or raise the limit; until then the subscription retries in the background",
			err, consumersAllowed(ctx, js, stream), name, name)
	case isAPIError(err, errCodeMaxAckPendingExcess):
		return &Error{Op: "subscribe to", Topic: topic, Kind: KindRejected, Err: ackPendingRefusal(err, stream, want.MaxAckPending)}
	}
	return explainWorkQueue(err, name, topic)
}

// consumersAllowed words whose max_consumers a stream of config stream
// reached: nats-server applies the stream's and the account's, which holds
// for each stream, whichever is lower.
func consumersAllowed(ctx context.Context, js natsjs.JetStream, stream natsjs.StreamConfig) string {
	// The subscription's look-ups may have used up its time.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), apiTimeout)
	defer cancel()
	account := -1
	if info, err := js.AccountInfo(ctx); err == nil && info.Limits.MaxConsumers > 0 {
		account = info.Limits.MaxConsumers
	}
	own := stream.MaxConsumers
	switch {
	case own > 0 && (account < 0 || own <= account):
		return fmt.Sprintf("stream %q allows at most %s (its max_consumers, which nats stream edit %s changes)",
			stream.Name, plural(int64(own), "consumer"), stream.Name)
	case account > 0:
		return fmt.Sprintf("the account allows at most %s on each stream (max_consumers in the account's jetstream block, or nsc edit account --js-consumer), and stream %q holds that many",
			plural(int64(account), "consumer"), stream.Name)
	}
	return fmt.Sprintf("stream %q, or the account, allows no more consumers (its max_consumers)", stream.Name)
}

// ackPendingRefusal explains a consumer refused for a max_ack_pending above
// a limit. JetStream's answer gives the limit's value but not whose it is:
// nats-server's, the account's, or the stream's consumer limits.
func ackPendingRefusal(err error, stream natsjs.StreamConfig, asked int) error {
	lowerOrRaise := fmt.Sprintf("set maxAckPending (%d unless set) to the limit or less in the subscription's or the component's metadata, or raise the limit; until then the subscription retries in the background",
		metadata.DefaultMaxAckPending)
	if lim := stream.ConsumerLimits.MaxAckPending; lim > 0 && asked > lim {
		return fmt.Errorf("%w: maxAckPending is %d, and stream %q allows a consumer at most its consumer_limits max_ack_pending of %d: %s (nats stream edit %s)",
			err, asked, stream.Name, lim, lowerOrRaise, stream.Name)
	}
	return fmt.Errorf("%w: maxAckPending is %d, more than the account's JetStream limits allow (max_ack_pending in the account's jetstream block, or nsc edit account --js-max-ack-pending), or nats-server's (max_ack_pending in the limits of its jetstream block): %s",
		err, asked, lowerOrRaise)
}

// unanswered explains a JetStream API call that got no answer in time, which
// the error alone ("context deadline exceeded") does not.
func unanswered(err error) string {
	if !waitedForAck(err) {
		return ""
	}
	return "; JetStream did not answer in time: it may be electing leaders (after servers restarted) or be overloaded, and a later attempt may succeed"
}

// overlapRefusal names the streams whose subjects overlap those of cfg,
// which JetStream refused to create, and what to do.
func overlapRefusal(ctx context.Context, js natsjs.JetStream, cfg natsjs.StreamConfig, named bool) string {
	other := "another stream"
	if in := overlapping(ctx, js, cfg.Subjects, cfg.Name); len(in) > 0 {
		other = strings.Join(in, ", ")
	}
	if !named {
		return fmt.Sprintf("; the subjects overlap %s: set streamName to that stream", other)
	}
	return fmt.Sprintf("; the subjects %v (streamSubjects and the topic) overlap %s: move those subjects to %q with nats stream edit, or remove that stream once nothing uses it, or set streamName and streamSubjects to that stream",
		cfg.Subjects, other, cfg.Name)
}

// overlapping words each stream but except whose subjects overlap subjects:
// stream "ORDERS" (subjects [orders.>]).
func overlapping(ctx context.Context, js natsjs.JetStream, subjects []string, except string) []string {
	var in []string
	list := js.ListStreams(ctx)
	for info := range list.Info() {
		if info.Config.Name != except && slices.ContainsFunc(info.Config.Subjects, func(have string) bool {
			return slices.ContainsFunc(subjects, func(want string) bool { return subjectsOverlap(have, want) })
		}) {
			in = append(in, fmt.Sprintf("stream %q (subjects %v)", info.Config.Name, info.Config.Subjects))
		}
	}
	return in
}

// subjectsOverlap reports whether some subject matches both a and b, which
// may hold wildcards.
func subjectsOverlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		if at[i] == ">" || bt[i] == ">" {
			return true
		}
		if at[i] != bt[i] && at[i] != "*" && bt[i] != "*" {
			return false
		}
	}
	return len(at) == len(bt)
}
