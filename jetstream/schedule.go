package jetstream

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Publish metadata for delayed delivery. The message waits in its stream, on
// a schedule subject of its own, and JetStream's message scheduler (nats-server
// 2.12+) publishes it to the topic at its time.
const (
	// MetadataScheduledSendTime: when the message reaches the topic, as an
	// RFC 3339 time.
	MetadataScheduledSendTime = "scheduledSendTime"
	// MetadataDeliverAfter: how long after the publish the message reaches
	// the topic, as a duration such as 30s or 1h30m.
	MetadataDeliverAfter = "deliverAfter"
)

// SchedulePrefix begins the subjects on which delayed messages wait for
// their time: <prefix>.<stream>.<unique token>. No subscription to a topic
// matches them, and one wildcard per stream covers them all.
const SchedulePrefix = "_schedule"

// The scheduler's headers.
const (
	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
	headerScheduleTTL    = "Nats-Schedule-TTL"
)

// scheduledFor reads from md when a publish is to reach its topic. The zero
// time means at once: neither key is set, or the time is not after now.
func scheduledFor(md map[string]string, now time.Time) (time.Time, error) {
	sendTime, hasTime := lookupFold(md, MetadataScheduledSendTime)
	after, hasAfter := lookupFold(md, MetadataDeliverAfter)
	switch {
	case hasTime && hasAfter:
		return time.Time{}, fmt.Errorf("%w: metadata %s and %s are both set: use one", ErrInvalidRequest, MetadataScheduledSendTime, MetadataDeliverAfter)
	case hasTime:
		at, err := time.Parse(time.RFC3339, sendTime)
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: metadata %s = %q: use an RFC 3339 time such as %s",
				ErrInvalidRequest, MetadataScheduledSendTime, sendTime, now.Add(time.Minute).UTC().Format(time.RFC3339))
		}
		if !at.After(now) {
			return time.Time{}, nil
		}
		return at, beyondScheduler(MetadataScheduledSendTime, sendTime, at)
	case hasAfter:
		d, err := time.ParseDuration(after)
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: metadata %s = %q: use a duration such as 30s, 5m or 1h30m", ErrInvalidRequest, MetadataDeliverAfter, after)
		}
		if d <= 0 {
			return time.Time{}, fmt.Errorf("%w: metadata %s = %q: use a duration of more than 0, such as 30s", ErrInvalidRequest, MetadataDeliverAfter, after)
		}
		at := now.Add(d)
		return at, beyondScheduler(MetadataDeliverAfter, after, at)
	}
	return time.Time{}, nil
}

// latestSchedule is the last time nats-server's scheduler can hold: it
// counts nanoseconds since 1970 in an int64, which ends in April 2262, and a
// later time wraps around to the past and fires at once.
var latestSchedule = time.Unix(0, math.MaxInt64).Add(-24 * time.Hour)

// beyondScheduler refuses a delay to at, set by metadata key = value, past
// latestSchedule.
func beyondScheduler(key, value string, at time.Time) error {
	if !at.After(latestSchedule) {
		return nil
	}
	return fmt.Errorf("%w: metadata %s = %q is after %s, the latest time NATS can delay a message to: give an earlier time",
		ErrInvalidRequest, key, value, latestSchedule.UTC().Format(time.RFC3339))
}

// scheduleKey returns which delay key md sets, for error messages.
func scheduleKey(md map[string]string) string {
	if _, ok := lookupFold(md, MetadataDeliverAfter); ok {
		return MetadataDeliverAfter
	}
	return MetadataScheduledSendTime
}

// isScheduleKey reports the delay keys, matched regardless of case.
func isScheduleKey(k string) bool {
	return strings.EqualFold(k, MetadataScheduledSendTime) || strings.EqualFold(k, MetadataDeliverAfter)
}

func lookupFold(md map[string]string, key string) (string, bool) {
	for k, v := range md {
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return "", false
}

// setSchedule turns msg, addressed to its topic, into a schedule that
// publishes it there at at. A TTL moves to Nats-Schedule-TTL, which the
// scheduler gives the message it publishes: the schedule itself must not
// expire before its time, and the TTL counts from when the message reaches
// the topic. The subject is set once the stream is known (routeSchedule).
func setSchedule(msg *nats.Msg, at time.Time) {
	msg.Header[headerSchedule] = []string{"@at " + at.UTC().Format(time.RFC3339Nano)}
	msg.Header[headerScheduleTarget] = []string{msg.Subject}
	if ttl, ok := msg.Header[natsjs.MsgTTLHeader]; ok {
		delete(msg.Header, natsjs.MsgTTLHeader)
		msg.Header[headerScheduleTTL] = ttl
	}
}

// isSchedule reports whether msg was made a schedule by setSchedule.
func isSchedule(msg *nats.Msg) bool {
	_, ok := msg.Header[headerScheduleTarget]
	return ok
}

// routeSchedule addresses a schedule to a new subject in stream. Each
// schedule needs its own: the scheduler keeps only the last message of a
// schedule subject.
func routeSchedule(msg *nats.Msg, stream string) {
	msg.Subject = scheduleSubject(stream)
}

func scheduleSubject(stream string) string { return SchedulePrefix + "." + stream + "." + nuid.Next() }

// scheduleSubjects is the wildcard that covers stream's schedule subjects.
func scheduleSubjects(stream string) string { return SchedulePrefix + "." + stream + ".*" }
