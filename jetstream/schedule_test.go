package jetstream

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// arrival is a delivered message and when the handler saw it.
type arrival struct {
	data string
	at   time.Time
	md   map[string]string
}

func collectArrivals() (pubsub.Handler, chan arrival) {
	ch := make(chan arrival, 100)
	return func(_ context.Context, m *pubsub.NewMessage) error {
		ch <- arrival{data: string(m.Data), at: time.Now(), md: m.Metadata}
		return nil
	}, ch
}

// Delayed delivery: scheduledSendTime and deliverAfter hold a message back
// until its time, through JetStream's message scheduler, and it reaches the
// topic's subscribers then, not before, and within a second after.
func TestDelayedDelivery(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "reminders", nil, h)
	waitConsumer(t, js, "reminders", "app-reminders")

	start := time.Now()
	at := start.Add(1500 * time.Millisecond)
	publish(t, ps, "reminders", "at a time", map[string]string{"scheduledSendTime": at.UTC().Format(time.RFC3339Nano)})
	publish(t, ps, "reminders", "after 3s", map[string]string{"deliverAfter": "3s"})
	publish(t, ps, "reminders", "now", nil)

	info := streamInfo(t, js, "reminders")
	assert.True(t, info.Config.AllowMsgSchedules, "an auto-provisioned stream allows message schedules")
	assert.Contains(t, info.Config.Subjects, "_schedule.reminders.*", "the stream covers its schedule subjects")

	first := recv(t, got, waitFor)
	assert.Equal(t, "now", first.data)
	second := recv(t, got, waitFor)
	assert.Equal(t, "at a time", second.data)
	assert.False(t, second.at.Before(at), "delivered %s before its time", at.Sub(second.at))
	assert.Less(t, second.at.Sub(at), time.Second, "delivered %s after its time", second.at.Sub(at))
	third := recv(t, got, waitFor)
	assert.Equal(t, "after 3s", third.data)
	due := start.Add(3 * time.Second)
	assert.False(t, third.at.Before(due), "delivered %s before its time", due.Sub(third.at))
	assert.Less(t, third.at.Sub(due), time.Second, "delivered %s after its time", third.at.Sub(due))

	// Delivered on the topic, with no scheduler headers in the metadata, and
	// the schedules themselves are gone from the stream.
	for _, a := range []arrival{second, third} {
		assert.Equal(t, "reminders", a.md[MetadataSubject])
		for k := range a.md {
			assert.False(t, strings.HasPrefix(strings.ToLower(k), "nats-"), "metadata %q", k)
		}
	}
	require.Eventually(t, func() bool {
		st, err := js.Stream(ctx(t), "reminders")
		if err != nil {
			return false
		}
		info, err := st.Info(ctx(t), natsjs.WithSubjectFilter("_schedule.>"))
		return err == nil && len(info.State.Subjects) == 0
	}, waitFor, tick, "the fired schedules were not removed")
	nothing(t, got, 200*time.Millisecond)
}

// A time that has already passed, or is now, publishes at once, as a
// plain message.
func TestDelayedDeliveryPastTimeIsImmediate(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	publish(t, ps, "late", "x", map[string]string{"scheduledSendTime": time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)})
	info := streamInfo(t, js, "late")
	assert.Equal(t, uint64(1), info.State.Msgs)
	assert.False(t, info.Config.AllowMsgSchedules, "a publish that is not delayed needs no schedules")
	m, err := lastMsg(t, js, "late", "late")
	require.NoError(t, err)
	assert.Equal(t, "x", string(m.Data))
}

// With a schedule, ttlInSeconds counts from the time the message reaches the
// topic; the CloudEvent id still de-duplicates a publish that is retried.
func TestDelayedDeliveryTTLAndDedup(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "later", nil, h)
	waitConsumer(t, js, "later", "app-later")

	event := `{"specversion":"1.0","id":"evt-7","source":"test","type":"t","datacontenttype":"text/plain","data":"hello"}`
	md := map[string]string{"deliverAfter": "1s", "ttlInSeconds": "60"}
	for range 2 {
		require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "later", Data: []byte(event), Metadata: md}))
	}
	waiting, err := lastMsg(t, js, "later", "_schedule.later.*")
	require.NoError(t, err)
	assert.Equal(t, "later:evt-7", waiting.Header.Get(natsjs.MsgIDHeader), "the schedule keeps the CloudEvent id for de-duplication")
	assert.Equal(t, "60s", waiting.Header.Get("Nats-Schedule-TTL"))
	assert.Empty(t, waiting.Header.Get(natsjs.MsgTTLHeader), "the schedule itself must not expire before its time")

	a := recv(t, got, waitFor)
	assert.JSONEq(t, event, a.data, "the event is delivered as it was published")
	nothing(t, got, 1500*time.Millisecond)

	delivered, err := lastMsg(t, js, "later", "later")
	require.NoError(t, err)
	assert.Equal(t, "60s", delivered.Header.Get(natsjs.MsgTTLHeader), "ttlInSeconds applies to the delivered message")
}

// Bad values name the key, the value and what is accepted, and nothing is
// stored.
func TestDelayedDeliveryBadValues(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "BAD", "streamSubjects": "bad.>"})
	for _, c := range []struct {
		md       map[string]string
		contains []string
	}{
		{map[string]string{"scheduledSendTime": "tomorrow"}, []string{"scheduledSendTime", `"tomorrow"`, "RFC 3339"}},
		{map[string]string{"scheduledSendTime": "2026-13-01T10:00:00Z"}, []string{"scheduledSendTime", "RFC 3339"}},
		{map[string]string{"scheduledSendTime": "2026-12-01 10:00:00"}, []string{"scheduledSendTime", "RFC 3339"}},
		{map[string]string{"deliverAfter": "30"}, []string{"deliverAfter", `"30"`, "30s"}},
		{map[string]string{"deliverAfter": "soon"}, []string{"deliverAfter", `"soon"`}},
		{map[string]string{"deliverAfter": "0s"}, []string{"deliverAfter", "more than 0"}},
		{map[string]string{"deliverAfter": "-5s"}, []string{"deliverAfter", "more than 0"}},
		{map[string]string{"deliverAfter": "5s", "scheduledSendTime": time.Now().Add(time.Hour).Format(time.RFC3339)}, []string{"deliverAfter", "scheduledSendTime", "one"}},
		{map[string]string{"deliverAfter": "5s", "expectedLastSubjectSequence": "0"}, []string{"deliverAfter", "expectedLastSubjectSequence"}},
		{map[string]string{"DeliverAfter": "never"}, []string{"deliverAfter", `"never"`}},
	} {
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "bad.x", Data: []byte("x"), Metadata: c.md})
		require.Error(t, err, "%v", c.md)
		t.Log(err)
		assert.Equal(t, KindInvalid, KindOf(err), "%v: %v", c.md, err)
		for _, s := range c.contains {
			assert.Contains(t, err.Error(), s, "%v", c.md)
		}
	}
	assert.Empty(t, streamNames(t, js), "nothing was published")

	// Bulk entries carry their own schedules and fail one by one.
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "bad.x", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "a", Event: []byte("a"), ContentType: "text/plain", Metadata: map[string]string{"deliverAfter": "1h"}},
		{EntryId: "b", Event: []byte("b"), ContentType: "text/plain", Metadata: map[string]string{"deliverAfter": "x"}},
		{EntryId: "c", Event: []byte("c"), ContentType: "text/plain"},
	}})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 1)
	assert.Equal(t, "b", resp.FailedEntries[0].EntryId)
	assert.Contains(t, resp.FailedEntries[0].Error.Error(), "deliverAfter")
	st, err := js.Stream(ctx(t), "BAD")
	require.NoError(t, err)
	info, err := st.Info(ctx(t), natsjs.WithSubjectFilter(">"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), info.State.Subjects["bad.x"], "the entry without a schedule is stored at once")
	assert.Len(t, info.State.Subjects, 2, "and the scheduled one waits on a schedule subject: %v", info.State.Subjects)
}

// Streams that cannot hold a schedule refuse with a reason and the fix, and
// nothing is stored: one that does not allow schedules while provisioning is
// off, and one with interest retention, on which JetStream drops a schedule
// that no consumer is interested in.
func TestDelayedDeliveryStreamRefusals(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "PLAIN", Subjects: []string{"plain.>"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "INTEREST", Subjects: []string{"interest.>"}, Retention: natsjs.InterestPolicy})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "READY", Subjects: []string{"ready.>", "_schedule.READY.*"}, AllowMsgSchedules: true})
	require.NoError(t, err)

	manual, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	delayed := map[string]string{"deliverAfter": "1h"}
	err = manual.Publish(ctx(t), &pubsub.PublishRequest{Topic: "plain.x", Data: []byte("x"), Metadata: delayed})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.ErrorIs(t, err, ErrSchedulesNotAllowed)
	for _, s := range []string{"PLAIN", "allow_msg_schedules", "_schedule.PLAIN.*", "autoProvision"} {
		assert.Contains(t, err.Error(), s)
	}
	info := streamInfo(t, js, "PLAIN")
	assert.False(t, info.Config.AllowMsgSchedules, "the stream must not be changed when autoProvision is false")
	assert.Zero(t, info.State.Msgs)

	// A stream set up by hand works without provisioning.
	require.NoError(t, manual.Publish(ctx(t), &pubsub.PublishRequest{Topic: "ready.x", Data: []byte("x"), Metadata: delayed}))
	assert.Equal(t, uint64(1), msgCount(t, js, "READY"))

	auto, _ := open(t, ns.ClientURL(), nil)
	err = auto.Publish(ctx(t), &pubsub.PublishRequest{Topic: "interest.x", Data: []byte("x"), Metadata: delayed})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.ErrorIs(t, err, ErrSchedulesNotAllowed)
	for _, s := range []string{"INTEREST", "interest retention", "limits"} {
		assert.Contains(t, err.Error(), s)
	}
	info = streamInfo(t, js, "INTEREST")
	assert.False(t, info.Config.AllowMsgSchedules)
	assert.Zero(t, info.State.Msgs)
}

// A BulkPublish that is not atomic stores each entry on its own: an entry
// that needs what the stream refuses (a delay on a stream that does not
// allow schedules, or has interest retention; a TTL on a stream without
// per-message TTL) fails, named, and the plain entries of the same bulk are
// stored, as they would be on their own.
func TestBulkPublishStoresThePlainEntriesWhenTheStreamRefusesADelayedOne(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "PLAIN", Subjects: []string{"plain.>"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "INTEREST", Subjects: []string{"interest.>"}, Retention: natsjs.InterestPolicy})
	require.NoError(t, err)
	// An interest stream keeps what a consumer has yet to take.
	_, err = js.CreateConsumer(ctx(t), "INTEREST", natsjs.ConsumerConfig{Durable: "keeper", AckPolicy: natsjs.AckExplicitPolicy})
	require.NoError(t, err)
	manual, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	auto, _ := open(t, ns.ClientURL(), nil)
	for _, c := range []struct {
		ps     *PubSub
		topic  string
		stream string
		md     map[string]string
	}{
		{manual, "plain.delayed", "PLAIN", map[string]string{"deliverAfter": "1h"}},
		{manual, "plain.ttl", "PLAIN", map[string]string{"ttlInSeconds": "60"}},
		{auto, "interest.delayed", "INTEREST", map[string]string{"deliverAfter": "1h"}},
	} {
		before := msgCount(t, js, c.stream)
		entries := textEntries("d", 3)
		entries[1].Metadata = c.md
		resp, err := c.ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: c.topic, Entries: entries})
		require.Error(t, err, c.topic)
		t.Log(err)
		assert.Contains(t, err.Error(), `"d1"`, "%s: the error names the entry", c.topic)
		assert.Equal(t, []string{"d1"}, failedIDs(t, resp), "%s: only the entry the stream cannot take fails", c.topic)
		assert.Equal(t, before+2, msgCount(t, js, c.stream), "%s: the plain entries are stored", c.topic)
	}
}

// Why interest retention is refused: JetStream acknowledges a schedule on an
// interest stream but does not keep it, since no consumer is interested in
// its subject, so the message would never be delivered.
func TestSchedulerDropsSchedulesOnInterestStreams(t *testing.T) {
	t.Parallel()
	_, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{
		Name: "DROPS", Subjects: []string{"drops", "_schedule.DROPS.*"}, Retention: natsjs.InterestPolicy, AllowMsgSchedules: true,
	})
	require.NoError(t, err)
	_, err = js.CreateOrUpdateConsumer(ctx(t), "DROPS", natsjs.ConsumerConfig{Durable: "app", FilterSubject: "drops", AckPolicy: natsjs.AckExplicitPolicy})
	require.NoError(t, err)
	msg := nats.NewMsg("_schedule.DROPS.one")
	msg.Header.Set("Nats-Schedule", "@at "+time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano))
	msg.Header.Set("Nats-Schedule-Target", "drops")
	ack, err := js.PublishMsg(ctx(t), msg)
	require.NoError(t, err, "JetStream acknowledges the schedule")
	assert.Equal(t, uint64(1), ack.Sequence)
	require.Never(t, func() bool { return count(js, "DROPS") > 0 }, 2500*time.Millisecond, tick,
		"the schedule was kept and fired on an interest stream; interest retention could be allowed for delayed delivery")
}

// Workqueue retention keeps a schedule until it fires.
func TestDelayedDeliveryWorkQueue(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "JOBS", Subjects: []string{"jobs"}, Retention: natsjs.WorkQueuePolicy})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "jobs", map[string]string{"deliverAll": "true"}, h)
	waitConsumer(t, js, "JOBS", "app-jobs")
	publish(t, ps, "jobs", "job", map[string]string{"deliverAfter": "1s"})
	assert.Equal(t, "job", recv(t, got, waitFor).data)
	require.Eventually(t, func() bool { return count(js, "JOBS") == 0 }, waitFor, tick, "the stream still holds %d messages", count(js, "JOBS"))
}

func TestScheduleSubject(t *testing.T) {
	a, b := scheduleSubject("ORDERS"), scheduleSubject("ORDERS")
	assert.NotEqual(t, a, b, "each schedule waits on a subject of its own, since the scheduler keeps one per subject")
	assert.True(t, strings.HasPrefix(a, "_schedule.ORDERS."), a)
	assert.Equal(t, 3, len(strings.Split(a, ".")), a)
	assert.True(t, covers([]string{scheduleSubjects("ORDERS")}, a))
	assert.Equal(t, fmt.Sprintf("%s.%s.*", SchedulePrefix, "ORDERS"), scheduleSubjects("ORDERS"))
}

// lastMsg returns the last message on subject in stream.
func lastMsg(t *testing.T, js natsjs.JetStream, stream, subject string) (*natsjs.RawStreamMsg, error) {
	t.Helper()
	st, err := js.Stream(ctx(t), stream)
	if err != nil {
		return nil, err
	}
	return st.GetLastMsgForSubject(ctx(t), subject)
}

// waitConsumer waits until the subscription's consumer exists. Tests that
// then change the stream (a delayed publish allows schedules) do so after
// it: nats-server 2.15.2 reads a stream's configuration without a lock while
// it creates a consumer, and the race detector flags a concurrent update.
func waitConsumer(t *testing.T, js natsjs.JetStream, stream, name string) {
	t.Helper()
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, stream, name)
		return err == nil && info != nil
	}, waitFor, tick, "consumer %s on stream %s", name, stream)
}

// An operator changes a stream's retention from limits to interest (nats
// stream edit --retention interest, which JetStream allows) after the
// component set it up for delayed messages. A delayed publish then either
// fails, naming interest retention, or still reaches the subscriber: never
// acknowledged and then dropped by the scheduler.
func TestDelayedPublishAfterRetentionTurnedInterest(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "REMIND", Subjects: []string{"remind"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "remind", nil, h)
	waitConsumer(t, js, "REMIND", "app-remind")
	publish(t, ps, "remind", "before", map[string]string{"deliverAfter": "1s"})
	assert.Equal(t, "before", recv(t, got, waitFor).data)

	st, err := js.Stream(ctx(t), "REMIND")
	require.NoError(t, err)
	cfg := st.CachedInfo().Config
	cfg.Retention = natsjs.InterestPolicy
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "remind", Data: []byte("after"), Metadata: map[string]string{"deliverAfter": "1s"}})
	if err != nil {
		t.Log(err)
		assert.ErrorIs(t, err, ErrSchedulesNotAllowed)
		assert.Contains(t, err.Error(), "interest retention")
		return
	}
	assert.Equal(t, "after", recv(t, got, waitFor).data, "the delayed publish was acknowledged and never delivered")
}

// An operator bounds the topic's stream with a max_age shorter than a delay
// (nats stream edit --max-age). JetStream would remove the waiting schedule
// at max_age, before its time, so a delayed publish either fails, naming
// max_age, or reaches the subscriber: never acknowledged and then gone.
func TestDelayedPublishLongerThanMaxAge(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "AGED", Subjects: []string{"aged"}, MaxAge: 2 * time.Second})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "aged", nil, h)
	waitConsumer(t, js, "AGED", "app-aged")

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "aged", Data: []byte("late"), Metadata: map[string]string{"deliverAfter": "4s"}})
	if err != nil {
		t.Log(err)
		assert.Contains(t, err.Error(), "max_age")
		return
	}
	assert.Equal(t, "late", recv(t, got, 10*time.Second).data, "the delayed publish was acknowledged and never delivered")
}

// JetStream refuses message schedules on a stream with discard new (nats
// stream add --discard new, or streamDiscard: new), and refuses to turn them
// on for one with deny_purge (nats stream add --deny-purge). A delayed
// publish to such a stream can never succeed, so it is refused as such, like
// one to an interest stream, naming the stream, its setting and the delay
// key, rather than reported as a passing unavailability that daprd retries
// for ever.
func TestDelayedPublishToStreamThatRefusesSchedules(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	for _, c := range []struct {
		cfg     natsjs.StreamConfig
		setting string
	}{
		{natsjs.StreamConfig{Name: "BOUNDED", Subjects: []string{"bounded"}, MaxMsgs: 100, Discard: natsjs.DiscardNew}, "discard"},
		{natsjs.StreamConfig{Name: "KEPT", Subjects: []string{"kept"}, DenyPurge: true}, "purge"},
	} {
		_, err := js.CreateStream(ctx(t), c.cfg)
		require.NoError(t, err)
		topic := c.cfg.Subjects[0]
		err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: topic, Data: []byte("x"), Metadata: map[string]string{"deliverAfter": "1h"}})
		require.Error(t, err, topic)
		t.Log(err)
		assert.Equal(t, KindRejected, KindOf(err), "%s: a refusal that retrying cannot change", topic)
		assert.ErrorIs(t, err, ErrSchedulesNotAllowed, topic)
		for _, s := range []string{c.cfg.Name, c.setting, "deliverAfter"} {
			assert.Contains(t, err.Error(), s, topic)
		}
		assert.Zero(t, msgCount(t, js, c.cfg.Name), topic)
	}
}

// A time too far ahead for nats-server's scheduler, which counts in
// nanoseconds since 1970 and so ends in April 2262 (a scheduledSendTime of
// 9999-12-31 as "hold it", a deliverAfter of the longest duration), must
// not reach the topic at once: the publish fails, naming the key and the
// latest time accepted, or the message waits.
func TestDelayedDeliveryBeyondTheSchedulersRange(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collectArrivals()
	subscribe(t, ps, "far", nil, h)
	waitConsumer(t, js, "far", "app-far")
	for _, md := range []map[string]string{
		{"scheduledSendTime": "9999-12-31T23:59:59Z"},
		{"deliverAfter": time.Duration(math.MaxInt64).String()},
	} {
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "far", Data: []byte(fmt.Sprint(md)), Metadata: md})
		if err != nil {
			t.Log(err)
			assert.Equal(t, KindInvalid, KindOf(err), "%v: %v", md, err)
			for k, v := range md {
				assert.Contains(t, err.Error(), k)
				assert.Contains(t, err.Error(), v)
			}
		}
	}
	select {
	case a := <-got:
		t.Fatalf("the message delayed by %s reached the topic at once", a.data)
	case <-time.After(2 * time.Second):
	}
}

// NATS goes away while a delayed publish reads its stream's settings, and
// comes back at once. No server answers that read on the connection made
// since, so the publish must fail soon as Unavailable, naming the lost
// connection, rather than wait for its deadline and fail as
// DeadlineExceeded.
func TestDelayedPublishWhenNATSGoesAwayDuringItsStreamRead(t *testing.T) {
	t.Parallel()
	ns, o := startRestartable(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	delayed := map[string]string{"deliverAfter": "1h"}
	publish(t, ps, "schedout", "first", delayed)

	lost := px.dropFrom("$JS.API.STREAM.INFO.schedout")
	res := make(chan error, 1)
	go func() {
		res <- ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "schedout", Data: []byte("second"), Metadata: delayed})
	}()
	closedWithin(t, lost, waitFor, "the read of the stream")
	natstest.Stop(ns)
	back := runAgain(t, o)
	stopped := time.Now()
	err := recv(t, res, 30*time.Second)
	took := time.Since(stopped)
	_, js := natstest.Client(t, back)
	t.Logf("Publish returned %s after NATS went away: %v", took.Round(10*time.Millisecond), err)
	require.Error(t, err)
	assert.Equal(t, uint64(1), msgCount(t, js, "schedout"), "nothing was sent")
	assert.Less(t, took, waitShort, "the publish waited for its deadline after the connection was lost")
	assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
}
