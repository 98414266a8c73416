package jetstream

import (
	"errors"
	"fmt"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// JetStream's refusals of a consumer on a workqueue stream.
const (
	errCodeWQMultipleUnfiltered natsjs.ErrorCode = 10099
	errCodeWQNotUnique          natsjs.ErrorCode = 10100
)

// forWorkQueue adapts a new consumer to a workqueue stream, which takes
// only consumers that ack explicitly and start at the first message it
// holds. A subscription that asked for another start is refused.
func (s *subscription) forWorkQueue(want *natsjs.ConsumerConfig, stream string) error {
	if want.AckPolicy != natsjs.AckExplicitPolicy {
		return &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"stream %q has workqueue retention, which removes a message once it is acknowledged, so its consumers must acknowledge each one: use ackPolicy explicit", stream)}
	}
	if !s.consumerCfg.StartAtSubscribe && s.consumerCfg.DeliverPolicy != natsjs.DeliverAllPolicy {
		return &Error{Op: "subscribe to", Topic: s.topic, Kind: KindRejected, Err: fmt.Errorf(
			"stream %q has workqueue retention, which holds only messages no consumer has taken yet, so its consumers start at the first one: remove deliverPolicy, startSequence and startTime from the subscription, or use deliverPolicy all", stream)}
	}
	// What the stream holds is what nobody has acknowledged, so the first
	// message is also where a consumer made again resumes.
	want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = natsjs.DeliverAllPolicy, 0, nil
	return nil
}

// explainWorkQueue says why a workqueue stream refused a consumer: another
// one already takes the topic's subjects.
func explainWorkQueue(err error, stream, topic string) error {
	var apiErr *natsjs.APIError
	if !errors.As(err, &apiErr) || (apiErr.ErrorCode != errCodeWQMultipleUnfiltered && apiErr.ErrorCode != errCodeWQNotUnique) {
		return err
	}
	return &Error{Op: "subscribe to", Topic: topic, Kind: KindRejected, Err: fmt.Errorf(
		"%w: stream %q has workqueue retention, which gives each message to one consumer, and another consumer already takes subjects of topic %q; a workqueue stream cannot deliver a topic to several app ids (consumerIDs) or to overlapping subscriptions: use one consumerID for the topic, or a stream with limits or interest retention to fan out",
		err, stream, topic)}
}
