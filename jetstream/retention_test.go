package jetstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The stream* settings reach the streams the component creates.
func TestProvisionedStreamSettings(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{
		"streamRetention": "interest", "streamDiscard": "new", "streamMaxMsgSize": "4096",
		"streamMaxMsgsPerSubject": "5", "streamCompression": "s2", "streamMaxMsgs": "1000",
	})
	subscribe(t, ps, "settings", nil, func(context.Context, *pubsub.NewMessage) error { return nil })
	require.Eventually(t, func() bool { _, err := js.Stream(ctx(t), "settings"); return err == nil }, waitFor, tick)
	cfg := streamInfo(t, js, "settings").Config
	assert.Equal(t, natsjs.InterestPolicy, cfg.Retention)
	assert.Equal(t, natsjs.DiscardNew, cfg.Discard)
	assert.Equal(t, int32(4096), cfg.MaxMsgSize)
	assert.Equal(t, int64(5), cfg.MaxMsgsPerSubject)
	assert.Equal(t, natsjs.S2Compression, cfg.Compression)

	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "settings", Data: make([]byte, 5000)})
	require.Error(t, err, "larger than streamMaxMsgSize")
	t.Log(err)
	assert.Equal(t, KindInvalid, KindOf(err))
	// The error names the stream, its limit and the setting, not only the
	// server's "message size exceeds maximum allowed".
	assert.ErrorContains(t, err, `stream "settings" takes messages of at most 4096 bytes`)
	assert.ErrorContains(t, err, "streamMaxMsgSize")

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "settings", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "small", Event: []byte("x"), ContentType: "text/plain"},
		{EntryId: "big", Event: make([]byte, 5000), ContentType: "text/plain"},
	}})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 1)
	assert.Equal(t, "big", resp.FailedEntries[0].EntryId)
	assert.ErrorContains(t, resp.FailedEntries[0].Error, `stream "settings" takes messages of at most 4096 bytes`)
}

// The placement reaches the stream (a single server takes any placement).
func TestProvisionedStreamPlacement(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamPlacementTags": "ssd,az:1"})
	publish(t, ps, "placed", "x", nil)
	assert.Equal(t, &natsjs.Placement{Tags: []string{"ssd", "az:1"}}, streamInfo(t, js, "placed").Config.Placement)
}

// On a workqueue stream, a subscription starts at the first message the
// stream holds, and the messages are removed once acknowledged; a second
// app id on the same topic is refused with the reason, and the first keeps
// everything.
func TestWorkQueueStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	props := map[string]string{"streamRetention": "workqueue", "consumerID": "a"}
	a, _ := open(t, ns.ClientURL(), props)
	publish(t, a, "jobs", "before", nil)
	h, got := collect()
	subscribe(t, a, "jobs", nil, h)
	assert.Equal(t, "before", string(recv(t, got, waitFor).Data), "a message published before the subscription is delivered")
	require.Eventually(t, func() bool { return count(js, "jobs") == 0 }, waitFor, tick, "an acknowledged message stays in the workqueue")

	props["consumerID"] = "b"
	b, log := open(t, ns.ClientURL(), props)
	var calls atomic.Int32
	subscribe(t, b, "jobs", nil, alwaysFailing(&calls, "b"))
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "workqueue retention") }, waitFor, tick)
	for _, s := range []string{"one consumer", "consumerID", "limits or interest"} {
		assert.Contains(t, log.String(), s)
	}
	publish(t, a, "jobs", "after", nil)
	assert.Equal(t, "after", string(recv(t, got, waitFor).Data))
	assert.Zero(t, calls.Load())

	// A subscription that asks to start elsewhere is refused.
	c, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "c", "streamRetention": "workqueue"})
	subscribe(t, c, "tasks", map[string]string{"deliverPolicy": "new"}, alwaysFailing(&calls, "c"))
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "remove deliverPolicy") }, waitFor, tick, "log:\n%s", log)
}

// An existing stream is left as it is; where it differs from the stream*
// settings the metadata gave, the log says so once.
func TestExistingStreamDifferencesLogged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"streamRetention": "workqueue", "streamMaxMsgsPerSubject": "-1", "streamCompression": "s2"})
	publish(t, ps, "orders.new", "1", nil)
	publish(t, ps, "orders.paid", "2", nil)
	text := log.String()
	assert.Equal(t, 1, strings.Count(text, "exists with settings other than"), text)
	for _, s := range []string{"ORDERS", "retention limits where streamRetention asks for workqueue", "compression none where streamCompression asks for s2", "nats stream edit"} {
		assert.Contains(t, text, s)
	}
	assert.NotContains(t, text, "streamMaxMsgsPerSubject", "a setting that matches is not named")
	assert.Equal(t, natsjs.LimitsPolicy, streamInfo(t, js, "ORDERS").Config.Retention, "the stream is left as it is")
}

// A dead letter bound for an interest stream that no consumer takes it from
// would be dropped: it is held until a consumer exists.
func TestDeadLetterIntoInterestStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}, Retention: natsjs.InterestPolicy})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"})
	var calls atomic.Int32
	subscribe(t, ps, "tasks", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "tasks", "t1", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "interest retention") }, waitFor, tick)
	assert.Zero(t, count(js, "DEAD"))

	dl, dead := collect()
	subscribe(t, ps, "dead.tasks", nil, dl)
	assert.Equal(t, "t1", string(recv(t, dead, waitFor).Data))
}

// A rolling update changes streamSubjects of a stream that exists (from
// orders.* to orders.>): the stream is left as it is, and the new replica's
// log says that its subjects differ from what streamSubjects asks for, as it
// does for every other stream* key.
func TestExistingStreamSubjectsDifferenceLogged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	old, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.*"})
	publish(t, old, "orders.new", "1", nil)
	updated, log := open(t, ns.ClientURL(), map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.>"})
	publish(t, updated, "orders.new", "2", nil)
	assert.Equal(t, []string{"orders.*"}, streamInfo(t, js, "ORDERS").Config.Subjects, "the stream is left as it is")
	assert.Contains(t, log.String(), "streamSubjects", "nothing says that streamSubjects is not applied")
}

// A rolling update sets streamName on an app whose topic the old replicas'
// stream holds. JetStream refuses the named stream with the topic (its
// subject overlaps), and the new replica uses the old stream instead: its
// log must say that streamName is not followed for the topic, naming the
// stream that holds it and the fix, and where that stream differs from the
// stream* keys given.
func TestStreamNameWhoseTopicAnotherStreamHolds(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	old, _ := open(t, ns.ClientURL(), nil)
	publish(t, old, "orders", "1", nil)
	updated, log := open(t, ns.ClientURL(), map[string]string{"streamName": "SHOP", "streamMaxAge": "1h"})
	publish(t, updated, "orders", "2", nil)
	assert.Equal(t, uint64(2), msgCount(t, js, "orders"), "both replicas publish into the old stream")
	text := log.String()
	for _, s := range []string{`streamName asks for stream \"SHOP\"`, `stream \"orders\" holds topic`, "max age 0s where streamMaxAge asks for 1h0m0s"} {
		assert.Contains(t, text, s)
	}
}

// A rolling update gathers an app's topics in one stream (streamName ALL,
// streamSubjects app.>) while the old replicas' stream for app.x exists:
// JetStream refuses ALL, whose subjects overlap it. The new replica's
// publish to a topic no stream holds yet fails, and the error must name the
// stream in the way and the setting, not tell an operator who has set
// streamName to set it.
func TestStreamSubjectsOverlappingAnOldStreamNamed(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	old, _ := open(t, ns.ClientURL(), nil)
	publish(t, old, "app.x", "1", nil)
	held, err := js.StreamNameBySubject(ctx(t), "app.x")
	require.NoError(t, err)
	updated, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "ALL", "streamSubjects": "app.>"})
	err = updated.Publish(ctx(t), &pubsub.PublishRequest{Topic: "app.y", Data: []byte("2")})
	require.Error(t, err)
	t.Log(err)
	assert.ErrorContains(t, err, strconv.Quote(held), "the error names the stream whose subjects overlap")
	assert.ErrorContains(t, err, "streamSubjects")
	assert.NotContains(t, err.Error(), "set streamName to that stream", "streamName is set")
}

// A publisher's Component and a subscriber's Component with other stream
// settings provision a topic's stream at the same moment: JetStream keeps
// the one created first, and the other instance must say, as it does when
// it finds the stream made earlier, that the stream differs from its
// settings.
func TestStreamProvisionedAtOnceWithOtherSettingsLogged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	logs := map[time.Duration]*logBuffer{}
	var instances []*PubSub
	for _, age := range []time.Duration{time.Hour, 24 * time.Hour} {
		ps, log := open(t, ns.ClientURL(), map[string]string{"streamMaxAge": age.String()})
		instances, logs[age] = append(instances, ps), log
	}
	const topics = 10
	errs := make(chan error, 2*topics)
	for i := range topics {
		for _, ps := range instances {
			go func() {
				errs <- ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: fmt.Sprintf("race%d", i), Data: []byte("x")})
			}()
		}
	}
	for range cap(errs) {
		require.NoError(t, recv(t, errs, waitFor))
	}
	unnamed := map[time.Duration][]string{}
	for i := range topics {
		name := fmt.Sprintf("race%d", i)
		won := streamInfo(t, js, name).Config.MaxAge
		for age, log := range logs {
			if age != won && !strings.Contains(log.String(), fmt.Sprintf(`stream \"%s\" exists with settings other than`, name)) {
				unnamed[age] = append(unnamed[age], name)
			}
		}
	}
	assert.Empty(t, unnamed, "streams whose max age differs from the instance's streamMaxAge, with no warning")
}

// A rolling update lifts the age limit (streamMaxAge 1h becomes 0, which the
// docs give as no limit): the stream the old replicas made keeps dropping
// messages after an hour, and the new replica's log must say so, as it does
// for any other value of a stream* key the stream does not have.
func TestStreamMaxAgeLiftedOnExistingStreamLogged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	old, _ := open(t, ns.ClientURL(), map[string]string{"streamMaxAge": "1h"})
	publish(t, old, "aged", "1", nil)
	updated, log := open(t, ns.ClientURL(), map[string]string{"streamMaxAge": "0"})
	publish(t, updated, "aged", "2", nil)
	assert.Equal(t, time.Hour, streamInfo(t, js, "aged").Config.MaxAge, "the stream is left as it is")
	assert.Contains(t, log.String(), "max age 1h0m0s where streamMaxAge asks for", "nothing says that the age limit stays")
}

// A hot reload asks for memory storage and a shorter age limit than the
// stream the old metadata created has. The log's fix must work for each:
// JetStream refuses to change the storage of a stream that exists (nats
// stream edit fails), and a lower age limit applied with nats stream edit
// removes at once the older messages, those no consumer has had yet
// included, so the warning must say so rather than only suggest the edit.
func TestExistingStreamDifferencesNameAWorkingFix(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	old, _ := open(t, ns.ClientURL(), map[string]string{"streamMaxAge": "24h"})
	publish(t, old, "kept", "1", nil)
	updated, log := open(t, ns.ClientURL(), map[string]string{"streamStorage": "memory", "streamMaxAge": "1h"})
	publish(t, updated, "kept", "2", nil)
	text := log.String()
	for _, s := range []string{"storage file where streamStorage asks for memory", "max age 24h0m0s where streamMaxAge asks for 1h0m0s"} {
		require.Contains(t, text, s)
	}
	assert.Contains(t, text, "JetStream cannot change the storage", "nats stream edit is refused for storage, and nothing says so")
	assert.Contains(t, text, "nats stream rm kept", "no fix that works for storage")
	assert.Contains(t, text, "not yet delivered", "nothing says that lowering the limit removes messages no consumer has had")
}

// As TestStreamNameWhoseTopicAnotherStreamHolds, but the stream that
// streamName names exists already (an operator made it for other topics).
// JetStream refuses to add the topic to it, as another stream holds the
// topic: the new replica must keep publishing into that stream and say so,
// naming both streams, as it does when streamName's stream does not exist
// yet, rather than fail every publish during the rolling update.
func TestStreamNameExistingWhileAnotherStreamHoldsTheTopic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "SHOP", Subjects: []string{"shop.>"}})
	require.NoError(t, err)
	old, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collect()
	subscribe(t, old, "orders", nil, h)
	publish(t, old, "orders", "1", nil)
	assert.Equal(t, "1", string(recv(t, got, waitFor).Data))

	updated, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "SHOP"})
	subscribe(t, updated, "orders", nil, h)
	require.NoError(t, updated.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("2")}), "log:\n%s", log)
	assert.Equal(t, "2", string(recv(t, got, waitFor).Data))
	assert.Equal(t, uint64(2), msgCount(t, js, "orders"), "both replicas publish into the old stream")
	assert.Contains(t, log.String(), `streamName asks for stream \"SHOP\"`)
	assert.Contains(t, log.String(), `stream \"orders\" holds topic`)
}
