package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// Kind classifies an error so that callers (and the gRPC layer) know whether
// trying again can help.
type Kind int

const (
	// KindUnavailable: NATS or JetStream could not be reached or did not
	// answer in time. Retrying later may succeed.
	KindUnavailable Kind = iota
	// KindInvalid: the request itself is wrong (topic, header, size).
	// Retrying the same request will fail the same way.
	KindInvalid
	// KindRejected: JetStream refused the request as configured (no stream
	// covers the topic, TTL not allowed, ...). It needs a configuration change.
	KindRejected
)

// String names the Kind as its constant does, without the prefix.
func (k Kind) String() string {
	switch k {
	case KindUnavailable:
		return "unavailable"
	case KindInvalid:
		return "invalid"
	case KindRejected:
		return "rejected"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

var (
	// ErrNotInitialized is returned by calls made before Init succeeded.
	ErrNotInitialized = errors.New("jetstream pubsub: not initialized")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("jetstream pubsub: closed")
	// ErrAlreadySettled is returned when a delivery is acked or nacked twice.
	ErrAlreadySettled = errors.New("jetstream pubsub: message already acknowledged")
	// ErrInvalidRequest is wrapped when a publish or subscribe request
	// itself is wrong: its topic, metadata or size.
	ErrInvalidRequest = errors.New("invalid request")
	// ErrNoStream is wrapped when no stream covers a topic and auto-provisioning is off.
	ErrNoStream = errors.New("no stream covers the topic")
	// ErrTTLNotAllowed is wrapped when a message has a TTL but its stream does
	// not allow per-message TTLs and auto-provisioning is off.
	ErrTTLNotAllowed = errors.New("per-message TTL not allowed")
	// ErrSchedulesNotAllowed is wrapped when a publish is delayed but its
	// stream cannot hold the schedule: it does not allow message schedules
	// while auto-provisioning is off, or it has interest retention.
	ErrSchedulesNotAllowed = errors.New("message schedules not allowed")
	// ErrAtomicNotAllowed is wrapped when a BulkPublish is atomic but its
	// stream does not allow atomic publish and auto-provisioning is off.
	ErrAtomicNotAllowed = errors.New("atomic publish not allowed")
	// ErrStreamTakesNoPublish is wrapped when the stream of a topic is sealed,
	// or does not acknowledge what is published (no_ack).
	ErrStreamTakesNoPublish = errors.New("the stream takes no publish")
	// ErrNotConnected is wrapped by calls that fail because the connection
	// to NATS is down: not made yet, or lost and being made again.
	ErrNotConnected = errors.New("NATS is not connected")
)

// Error carries the topic and the Kind of a failure.
type Error struct {
	Op    string
	Topic string
	Kind  Kind
	Err   error
}

func (e *Error) Error() string {
	if e.Topic == "" {
		return fmt.Sprintf("%s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("%s topic %q: %v", e.Op, e.Topic, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// GRPCStatus gives e the gRPC status that daprd gets for it over the socket,
// so that status.FromError and status.Code read the same code from an error
// of an in-process PubSub, and Dapr's retry matching treats both alike. A
// deadline or a cancellation keeps its own code whatever the Kind: it tells
// about the call, not the request.
func (e *Error) GRPCStatus() *status.Status {
	return status.New(e.code(), e.Error())
}

func (e *Error) code() codes.Code {
	switch {
	case errors.Is(e.Err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(e.Err, context.Canceled):
		return codes.Canceled
	}
	switch e.Kind {
	case KindInvalid:
		return codes.InvalidArgument
	case KindRejected:
		return codes.FailedPrecondition
	}
	return codes.Unavailable
}

// KindOf returns the Kind of err. Errors this package did not classify count
// as KindUnavailable, the kind that is safe to retry.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, metadata.ErrInvalid) || errors.Is(err, ErrInvalidRequest) {
		return KindInvalid
	}
	return KindUnavailable
}

// IsRetriable reports whether the same call may succeed later.
func IsRetriable(err error) bool { return KindOf(err) == KindUnavailable }

// classify wraps a NATS error with the topic and its Kind.
func classify(op, topic string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Op: op, Topic: topic, Kind: classifyKind(err), Err: err}
}

// classifyKind is the Kind classify gives err.
func classifyKind(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	var apiErr *natsjs.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, natsjs.ErrStreamMessageExceedsMaximum), errors.Is(err, metadata.ErrInvalid),
		errors.Is(err, ErrInvalidRequest):
		return KindInvalid
	case errors.Is(err, ErrNoStream), errors.Is(err, ErrTTLNotAllowed), errors.Is(err, ErrSchedulesNotAllowed),
		errors.Is(err, ErrAtomicNotAllowed), errors.Is(err, ErrStreamTakesNoPublish):
		return KindRejected
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		// Room comes back as messages leave the account's streams.
		isAPIError(err, errCodeAccountResourcesExceeded),
		// The rest of an atomic batch sent on reconnect, to a server that
		// lost its beginning with the connection (an entry too large is
		// told apart before this): nothing is stored, and it may be sent
		// again.
		isAPIError(err, jetstreamext.JSErrCodeBatchPublishIncomplete):
		return KindUnavailable
	case isAPIError(err, errCodeReplicasNotSupported):
		// A lone server never takes more replicas, however often asked.
		return KindRejected
	case errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 && apiErr.Code != 408:
		return KindRejected
	}
	return KindUnavailable
}

func invalid(op, topic string, err error) error {
	return &Error{Op: op, Topic: topic, Kind: KindInvalid, Err: err}
}
