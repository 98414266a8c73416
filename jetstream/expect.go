package jetstream

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// Publish metadata for optimistic concurrency. Each becomes the
// Nats-Expected-* header that JetStream checks before it stores the message,
// so that an event-sourced app appends only after what it has read.
const (
	// MetadataExpectedLastSequence: the stream's last sequence (0: the
	// stream is empty).
	MetadataExpectedLastSequence = "expectedLastSequence"
	// MetadataExpectedLastSubjectSequence: the sequence of the last message
	// on the topic (0: nothing on the topic yet).
	MetadataExpectedLastSubjectSequence = "expectedLastSubjectSequence"
	// MetadataExpectedLastMsgID: the msgId of the stream's last message, as
	// it was published to this topic.
	MetadataExpectedLastMsgID = "expectedLastMsgId"
	// MetadataExpectedStream: the stream that stores the topic.
	MetadataExpectedStream = "expectedStream"
)

// expectation is one expected* key of a publish.
type expectation struct {
	key, value string
}

// expectationKey returns the canonical name of an expected* metadata key,
// matched regardless of case, or "".
func expectationKey(k string) string {
	for _, e := range []string{MetadataExpectedLastSequence, MetadataExpectedLastSubjectSequence, MetadataExpectedLastMsgID, MetadataExpectedStream} {
		if strings.EqualFold(k, e) {
			return e
		}
	}
	return ""
}

// setExpectation checks one expected* value and sets its header on msg.
func setExpectation(msg *nats.Msg, topic, key, value string) error {
	bad := func(accepted string) error {
		return fmt.Errorf("%w: metadata %s = %q: %s", ErrInvalidRequest, key, value, accepted)
	}
	switch key {
	case MetadataExpectedLastSequence, MetadataExpectedLastSubjectSequence:
		if _, err := strconv.ParseUint(value, 10, 64); err != nil {
			return bad("use a stream sequence, a whole number of 0 or more (0: nothing stored yet)")
		}
		header := natsjs.ExpectedLastSeqHeader
		if key == MetadataExpectedLastSubjectSequence {
			header = natsjs.ExpectedLastSubjSeqHeader
		}
		msg.Header[header] = []string{value}
	case MetadataExpectedLastMsgID:
		if value == "" || strings.ContainsAny(value, "\r\n") {
			return bad("use the msgId the last message was published with, which has no line break")
		}
		msg.Header[natsjs.ExpectedLastMsgIDHeader] = []string{scopedMsgID(topic, value)}
	case MetadataExpectedStream:
		if !metadata.ValidName(value) {
			return bad("use a stream name, without spaces, dots or wildcards")
		}
		msg.Header[natsjs.ExpectedStreamHeader] = []string{value}
	}
	return nil
}

// expectations lists the expected* keys of md.
func expectations(md map[string]string) []expectation {
	var out []expectation
	for k, v := range md {
		if key := expectationKey(k); key != "" {
			out = append(out, expectation{key, v})
		}
	}
	return out
}

// explainExpectation rewrites JetStream's refusal of a publish whose
// expectation did not hold, naming the key, what was expected and what the
// stream holds. Other errors are returned as they are.
// stored names the stream that stores topic, for the expectedStream case.
func explainExpectation(err error, topic string, md map[string]string, stored func() string) error {
	if err == nil {
		return nil
	}
	var apiErr *natsjs.APIError
	if !errors.As(err, &apiErr) {
		return err
	}
	find := func(key string) string {
		for _, e := range expectations(md) {
			if e.key == key {
				return e.value
			}
		}
		return ""
	}
	// The server's description ends with what it holds: "wrong last
	// sequence: 5", "wrong last msg ID: <id>".
	_, holds, _ := strings.Cut(apiErr.Description, ": ")
	var what string
	switch apiErr.ErrorCode {
	case natsjs.JSErrCodeStreamWrongLastSequence, natsjs.JSErrCodeStreamWrongLastSequenceConstant:
		key := MetadataExpectedLastSequence
		if v := find(MetadataExpectedLastSubjectSequence); v != "" {
			key = MetadataExpectedLastSubjectSequence
			what = fmt.Sprintf("%s = %q does not hold: the last message on topic %q is at sequence %s", key, v, topic, holds)
		} else {
			what = fmt.Sprintf("%s = %q does not hold: the stream's last sequence is %s", key, find(key), holds)
		}
		if holds == "" {
			// JetStream does not say, for an entry of an atomic batch.
			what = fmt.Sprintf("%s = %q does not hold", key, find(key))
		}
	case 10070: // wrong last msg ID
		what = wrongLastMsgID(topic, find(MetadataExpectedLastMsgID), holds)
	case 10060: // expected stream does not match
		what = fmt.Sprintf("%s = %q does not hold: topic %q is stored in stream %q", MetadataExpectedStream, find(MetadataExpectedStream), topic, stored())
	default:
		return err
	}
	return &Error{Op: "publish to", Topic: topic, Kind: KindRejected,
		Err: fmt.Errorf("%s; nothing was stored (read again and retry with what the stream holds)", what)}
}

// isExpectationCode reports JetStream's refusals of a publish whose
// Nats-Expected-* check did not hold.
func isExpectationCode(c natsjs.ErrorCode) bool {
	switch c {
	case natsjs.JSErrCodeStreamWrongLastSequence, natsjs.JSErrCodeStreamWrongLastSequenceConstant, 10070, 10060:
		return true
	}
	return false
}

func orNone(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// wrongLastMsgID says why expectedLastMsgId = expected did not hold, when the
// stream's last message has the Nats-Msg-Id holds. The component checks the
// id scoped to topic, so a last message whose id another NATS publisher set
// (or a publish to another topic of the stream) can never match: that is
// said, with what to expect instead, rather than an id that looks equal.
func wrongLastMsgID(topic, expected, holds string) string {
	if holds == "" {
		return fmt.Sprintf("%s = %q does not hold: the stream's last message has no msgId", MetadataExpectedLastMsgID, expected)
	}
	if id, scoped := scopedID(topic, holds); scoped {
		return fmt.Sprintf("%s = %q does not hold: the stream's last message has msgId %q", MetadataExpectedLastMsgID, expected, id)
	}
	return fmt.Sprintf("%s = %q does not hold: the stream's last message has Nats-Msg-Id %q, which was not set by a publish to topic %q through this component (those ids are scoped to the topic), so no expectedLastMsgId matches it; expect expectedLastSequence or expectedLastSubjectSequence instead",
		MetadataExpectedLastMsgID, expected, holds, topic)
}
