package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// reservedKeys are metadata keys that instruct Dapr or the component; they
// must never become NATS headers.
var reservedKeys = []string{"ttlInSeconds", "rawPayload", "msgId", "cloudevent.id", "cloudevent.source", "cloudevent.type"}

func TestPublishSubscribeRoundTrip(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders", nil, h)

	ct := "application/json"
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{
		Topic: "orders", Data: []byte(`{"n":1}`), ContentType: &ct,
		Metadata: map[string]string{
			"x-trace": "abc", "Tenant": "t1",
			"ttlInSeconds": "60", "rawPayload": "true", "msgId": "m-1",
			"cloudevent.id": "ce-1", "cloudevent.source": "src", "cloudevent.type": "typ",
		},
	}))

	m := recv(t, got, waitFor)
	assert.Equal(t, `{"n":1}`, string(m.Data))
	assert.Equal(t, "orders", m.Topic)
	require.NotNil(t, m.ContentType)
	assert.Equal(t, ct, *m.ContentType)
	assert.Equal(t, "abc", m.Metadata["x-trace"])
	assert.Equal(t, "t1", m.Metadata["Tenant"])
	assert.Equal(t, "orders", m.Metadata[MetadataTopic])
	assert.Equal(t, "orders", m.Metadata[MetadataSubject])
	assert.Equal(t, "orders", m.Metadata[MetadataStream])
	assert.Equal(t, "1", m.Metadata[MetadataSequence])
	assert.Equal(t, "1", m.Metadata[MetadataDeliveries])
	assert.Equal(t, "app-orders", m.Metadata[MetadataConsumer])
	assert.NotEmpty(t, m.Metadata[MetadataTimestamp])
	assert.Equal(t, "m-1", m.Metadata[MetadataMsgID], "the de-duplication id is reported as msgId")
	for _, k := range reservedKeys {
		if k != MetadataMsgID {
			assert.NotContains(t, m.Metadata, k)
		}
	}

	// What JetStream stored: reserved keys are instructions, not headers.
	st, err := js.Stream(ctx(t), "orders")
	require.NoError(t, err)
	raw, err := st.GetMsg(ctx(t), 1)
	require.NoError(t, err)
	for k := range raw.Header {
		for _, r := range reservedKeys {
			assert.False(t, strings.EqualFold(k, r), "reserved metadata key %q was stored as NATS header %q", r, k)
		}
	}
	assert.Equal(t, "abc", raw.Header.Get("x-trace"))
	assert.Equal(t, "t1", raw.Header.Get("Tenant"))
	assert.Equal(t, ct, raw.Header.Get("Content-Type"))
	assert.Equal(t, "orders:m-1", raw.Header.Get(natsjs.MsgIDHeader), "the de-duplication id is scoped to the topic")
	assert.NotEmpty(t, raw.Header.Get(natsjs.MsgTTLHeader), "ttlInSeconds becomes the per-message TTL")

	// Headers set by a plain NATS publisher arrive as metadata.
	_, err = js.PublishMsg(ctx(t), &nats.Msg{
		Subject: "orders", Data: []byte("raw"),
		Header: nats.Header{"X-Raw": {"r1"}, "Content-Type": {"text/plain"}},
	})
	require.NoError(t, err)
	m = recv(t, got, waitFor)
	assert.Equal(t, "raw", string(m.Data))
	assert.Equal(t, "r1", m.Metadata["X-Raw"])
	require.NotNil(t, m.ContentType)
	assert.Equal(t, "text/plain", *m.ContentType)
	assert.Equal(t, "2", m.Metadata[MetadataSequence])

	// NATS headers keep the case they were given: content-type in lower
	// case, as many clients write it, is the content type too.
	_, err = js.PublishMsg(ctx(t), &nats.Msg{Subject: "orders", Data: []byte("lower"), Header: nats.Header{"content-type": {"text/csv"}}})
	require.NoError(t, err)
	m = recv(t, got, waitFor)
	require.NotNil(t, m.ContentType)
	assert.Equal(t, "text/csv", *m.ContentType)
	assert.NotContains(t, m.Metadata, "content-type")

	// Without a content type, none is reported.
	publish(t, ps, "orders", "plain", nil)
	m = recv(t, got, waitFor)
	assert.Equal(t, "plain", string(m.Data))
	assert.Nil(t, m.ContentType)
}

func TestPublishDeduplication(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)

	cases := []struct {
		topic string
		data  [2]string
		md    map[string]string
		want  uint64
	}{
		{"dedupce", [2]string{
			`{"specversion":"1.0","id":"evt-1","source":"s","type":"t","data":{"a":1}}`,
			`{"specversion":"1.0","id":"evt-1","source":"s","type":"t","data":{"a":1}}`,
		}, nil, 1},
		{"dedupce2", [2]string{
			`{"specversion":"1.0","id":"evt-1","source":"s","type":"t"}`,
			`{"specversion":"1.0","id":"evt-2","source":"s","type":"t"}`,
		}, nil, 2},
		{"dedupmsgid", [2]string{"one", "two"}, map[string]string{"msgId": "same"}, 1},
		{"dedupraw", [2]string{"one", "two"}, map[string]string{"rawPayload": "true", "cloudevent.id": "raw-1"}, 1},
		{"dedupbad", [2]string{`{"id":"x"`, `{"id":"x"`}, nil, 2},
		{"dedupnotce", [2]string{`{"id":"x"}`, `{"id":"x"}`}, nil, 2},
	}
	for _, c := range cases {
		for _, d := range c.data {
			publish(t, ps, c.topic, d, c.md)
		}
		assert.Equal(t, c.want, msgCount(t, js, c.topic), "topic %s", c.topic)
	}
}

// A stream that republishes what it stores (RePublish) to subjects another
// stream keeps: a subscription to the copy's topic gets the id the publisher
// gave, not the Nats-Msg-Id scoped to the topic the original went to.
func TestRepublishedCopyKeepsTheMsgID(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"},
		RePublish: &natsjs.RePublish{Source: "orders.>", Destination: "copy.orders.>"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "COPY", Subjects: []string{"copy.>"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), nil)
	h, got := collect()
	subscribe(t, ps, "copy.orders.a", nil, h)
	publish(t, ps, "orders.a", "x", map[string]string{"msgId": "m-1"})
	m := recv(t, got, waitFor)
	assert.Equal(t, "copy.orders.a", m.Topic)
	assert.Equal(t, "m-1", m.Metadata[MetadataMsgID])
}

// TestPublishDedupPerTopic: JetStream de-duplicates across a whole stream,
// but a message id only stands for a retry of the same publish: the same
// CloudEvent sent to two topics of one stream must be stored on both, while a
// retried publish to the same topic is still dropped. The same holds for the
// msgId metadata and for BulkPublish.
func TestPublishDedupPerTopic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.>"})
	stored := func() uint64 { return msgCount(t, js, "ORDERS") }

	ce := `{"specversion":"1.0","id":"evt-1","source":"s","type":"t","data":{"n":1}}`
	publish(t, ps, "orders.new", ce, nil)
	publish(t, ps, "orders.audit", ce, nil)
	require.Equal(t, uint64(2), stored(), "the same CloudEvent on another topic of the stream is not a duplicate")
	publish(t, ps, "orders.new", ce, nil)
	publish(t, ps, "orders.audit", ce, nil)
	require.Equal(t, uint64(2), stored(), "a retried publish to the same topic is de-duplicated")

	st, err := js.Stream(ctx(t), "ORDERS")
	require.NoError(t, err)
	raw, err := st.GetMsg(ctx(t), 2)
	require.NoError(t, err)
	assert.Equal(t, "orders.audit", raw.Subject)
	assert.Equal(t, "orders.audit:evt-1", raw.Header.Get(natsjs.MsgIDHeader), "Nats-Msg-Id is <topic>:<id>")

	md := map[string]string{"msgId": "m-1"}
	publish(t, ps, "orders.new", "a", md)
	publish(t, ps, "orders.audit", "a", md)
	publish(t, ps, "orders.new", "a", md)
	require.Equal(t, uint64(4), stored(), "msgId metadata is scoped to the topic too")

	bulk := func(topic string) {
		t.Helper()
		resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{PubsubName: "test", Topic: topic, Entries: []pubsub.BulkMessageEntry{
			{EntryId: "1", Event: []byte(ce), ContentType: "application/cloudevents+json"},
			{EntryId: "2", Event: []byte(`{"specversion":"1.0","id":"evt-2","source":"s","type":"t"}`), ContentType: "application/cloudevents+json"},
		}})
		require.NoError(t, err)
		require.Empty(t, resp.FailedEntries)
	}
	bulk("orders.new")
	require.Equal(t, uint64(5), stored(), "in a bulk, evt-1 is a retry on orders.new and evt-2 is new")
	bulk("orders.bulk")
	require.Equal(t, uint64(7), stored(), "a bulk to another topic of the stream is not a duplicate")
	bulk("orders.bulk")
	require.Equal(t, uint64(7), stored(), "a retried bulk to the same topic is de-duplicated")
}

// TestDeliveredMsgIDUnscoped: the msgId delivered metadata is the id the
// publisher gave, not the topic-scoped Nats-Msg-Id, also through a wildcard
// subscription, where the message's subject is the topic it was published to.
// A Nats-Msg-Id set by a plain NATS publisher is reported as it is.
func TestDeliveredMsgIDUnscoped(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "ORDERS", "streamSubjects": "orders.>"})
	h, got := collect()
	subscribe(t, ps, "orders.>", nil, h)

	ce := `{"specversion":"1.0","id":"evt-1","source":"s","type":"t"}`
	publish(t, ps, "orders.new", ce, nil)
	publish(t, ps, "orders.audit", ce, nil)
	publish(t, ps, "orders.new", "x", map[string]string{"msgId": "orders.new:m-1"})
	_, err := js.PublishMsg(ctx(t), &nats.Msg{Subject: "orders.raw", Data: []byte("raw"), Header: nats.Header{natsjs.MsgIDHeader: {"raw-1"}}})
	require.NoError(t, err)

	want := map[string]string{"orders.new": "evt-1", "orders.audit": "evt-1"}
	for range 2 {
		m := recv(t, got, waitFor)
		assert.Equal(t, want[m.Metadata[MetadataSubject]], m.Metadata[MetadataMsgID], "subject %s", m.Metadata[MetadataSubject])
	}
	m := recv(t, got, waitFor)
	assert.Equal(t, "orders.new:m-1", m.Metadata[MetadataMsgID], "an id that looks scoped is kept as the publisher gave it")
	m = recv(t, got, waitFor)
	assert.Equal(t, "raw-1", m.Metadata[MetadataMsgID])
}

// TestUnscopedMsgID: deliveries report the id a publisher gave, taken out of
// its topic-scoped Nats-Msg-Id.
func TestUnscopedMsgID(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ subject, header, want string }{
		{"orders", "orders:evt-1", "evt-1"},
		{"orders.new", "orders.new:a:b", "a:b"},
		{"orders.new", "orders.new:orders.new:m-1", "orders.new:m-1"},
		{"orders.new", "orders.audit:evt-1", "orders.audit:evt-1"}, // not this subject's scope
		{"orders", "orders.new:evt-1", "orders.new:evt-1"},
		{"orders", "evt-1", "evt-1"}, // a plain NATS publisher's id
		{"orders", "orders:", "orders:"},
		{"orders", "", ""},
	} {
		assert.Equal(t, c.want, unscopedMsgID(c.subject, c.header), "%q on %q", c.header, c.subject)
	}
	for _, id := range []string{"evt-1", "a:b", "orders:x", " padded "} {
		assert.Equal(t, id, unscopedMsgID("orders", scopedMsgID("orders", id)), "round trip of %q", id)
	}
}

func TestPublishTTL(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)

	publish(t, ps, "ttl", "short", map[string]string{"ttlInSeconds": "1"})
	publish(t, ps, "ttl", "keep", nil)
	assert.True(t, streamInfo(t, js, "ttl").Config.AllowMsgTTL, "an auto-provisioned stream allows per-message TTL")

	require.Eventually(t, func() bool { return count(js, "ttl") == 1 }, 10*time.Second, 50*time.Millisecond,
		"the message with ttlInSeconds 1 was not removed")
	st, err := js.Stream(ctx(t), "ttl")
	require.NoError(t, err)
	_, err = st.GetMsg(ctx(t), 1)
	require.ErrorIs(t, err, natsjs.ErrMsgNotFound)
	kept, err := st.GetMsg(ctx(t), 2)
	require.NoError(t, err)
	assert.Equal(t, "keep", string(kept.Data))
}

func TestPublishTTLRejectedByStreamWithoutMsgTTL(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NOTTL", Subjects: []string{"nottl.>"}, Storage: natsjs.MemoryStorage})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "nottl.x", Data: []byte("x"), Metadata: map[string]string{"ttlInSeconds": "5"}})
	require.Error(t, err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.ErrorIs(t, err, ErrTTLNotAllowed)
	assert.Contains(t, err.Error(), "NOTTL")
	assert.False(t, IsRetriable(err))

	info := streamInfo(t, js, "NOTTL")
	assert.False(t, info.Config.AllowMsgTTL, "the stream must not be changed when autoProvision is false")
	assert.Zero(t, info.State.Msgs)

	publish(t, ps, "nottl.x", "no ttl", nil)
	assert.Equal(t, uint64(1), msgCount(t, js, "NOTTL"))
}

func TestAutoProvisionStreamPerTopic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)

	publish(t, ps, "neworders", "x", nil)
	info := streamInfo(t, js, "neworders")
	assert.Equal(t, []string{"neworders"}, info.Config.Subjects)
	assert.True(t, info.Config.AllowMsgTTL)
	assert.Equal(t, uint64(1), info.State.Msgs)

	// A dotted topic gets a valid stream name of its own.
	publish(t, ps, "shop.orders", "y", nil)
	name, err := js.StreamNameBySubject(ctx(t), "shop.orders")
	require.NoError(t, err)
	assert.NotContains(t, name, ".")
	assert.True(t, strings.HasPrefix(name, "shop_orders"), name)
	assert.Equal(t, uint64(1), msgCount(t, js, name))
}

func TestStreamNameAndSubjects(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "TWITTERCLONE", "streamSubjects": "TWITTERCLONE.*"})

	publish(t, ps, "TWITTERCLONE.tweet_created", "c", nil)
	publish(t, ps, "TWITTERCLONE.tweet_liked", "l", nil)

	info := streamInfo(t, js, "TWITTERCLONE")
	assert.Equal(t, []string{"TWITTERCLONE.*"}, info.Config.Subjects)
	assert.Equal(t, uint64(2), info.State.Msgs)
	assert.Equal(t, uint64(2), info.State.NumSubjects)
	assert.Equal(t, []string{"TWITTERCLONE"}, streamNames(t, js))
}

// An app that publishes to a topic per entity (orders.<id>), on a stream
// whose wildcard holds them all, asks JetStream for the stream once, not
// once per topic: the config read for the first covers the rest. With a
// stream the operator made and with the one streamName names alike.
func TestTopicPerEntityAsksForItsStreamOnce(t *testing.T) {
	t.Parallel()
	for name, props := range map[string]map[string]string{
		"found by subject": {"autoProvision": "false"},
		"streamName":       {"streamName": "ORDERS"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
			require.NoError(t, err)
			nc, _ := natstest.Client(t, ns)
			requests, err := nc.SubscribeSync("$JS.API.STREAM.>")
			require.NoError(t, err)
			require.NoError(t, nc.Flush())
			ps, _ := open(t, ns.ClientURL(), props)

			asked := func() int {
				// The requests reach this connection before the PubAck
				// reaches the component; the flush waits for them.
				require.NoError(t, nc.Flush())
				n, _, err := requests.Pending()
				require.NoError(t, err)
				return n
			}
			publish(t, ps, "orders.0", "x", nil)
			first := asked()
			const n = 50
			for i := 1; i < n; i++ {
				publish(t, ps, fmt.Sprintf("orders.%d", i), "x", nil)
			}
			assert.Equal(t, first, asked(), "requests to JetStream's stream API for %d more topics of the stream", n-1)
			assert.Equal(t, uint64(n), msgCount(t, js, "ORDERS"))
		})
	}
}

func TestExistingStreamIsExtended(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "EXT", Subjects: []string{"ext.a"}, Storage: natsjs.MemoryStorage})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "EXT"})

	publish(t, ps, "ext.b", "b", nil)
	info := streamInfo(t, js, "EXT")
	assert.ElementsMatch(t, []string{"ext.a", "ext.b"}, info.Config.Subjects)
	assert.Equal(t, uint64(1), info.State.Msgs)
	assert.Equal(t, natsjs.MemoryStorage, info.Config.Storage, "extending keeps the rest of the stream's configuration")
	assert.Equal(t, []string{"EXT"}, streamNames(t, js))
}

// Old and new replicas of a rolling update share a stream (streamName) and
// extend it at once with the topics they publish to. JetStream has no
// compare-and-set for a stream's config: another replica, in its own
// process, writes back the subjects it read, with its own topic, and drops
// the ones this replica added meanwhile, whose publishes then get "no
// response from stream". Every publish must still be stored, once (its
// msgId de-duplicates a send again), and so must the next publish to each
// topic.
func TestConcurrentExtensionsKeepEachOthersSubjects(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "EXT", Subjects: []string{"ext.seed"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "EXT"})
	const topics = 30
	errs := make(chan error, 2*topics)
	for round := 1; round <= 3; round++ {
		for i := range topics {
			go func() {
				errs <- ps.Publish(ctx(t), &pubsub.PublishRequest{
					Topic: fmt.Sprintf("ext.t%d", i), Data: []byte("x"),
					Metadata: map[string]string{MetadataMsgID: fmt.Sprintf("%d-%d", round, i)},
				})
			}()
			go func() { errs <- extendAsAnotherReplica(ctx(t), js, "EXT", fmt.Sprintf("ext.other%d.%d", round, i)) }()
		}
		for range cap(errs) {
			assert.NoError(t, recv(t, errs, waitFor), "round %d", round)
		}
	}
	stored := streamInfo(t, js, "EXT").State.Msgs
	assert.Equal(t, uint64(3*topics), stored, "every publish reported stored is stored once")
}

// extendAsAnotherReplica adds subject to stream name the way an instance of
// the component in another process would: it reads the stream's subjects
// and writes them back with one more.
func extendAsAnotherReplica(ctx context.Context, js natsjs.JetStream, name, subject string) error {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return err
	}
	cfg := st.CachedInfo().Config
	cfg.Subjects = append(cfg.Subjects, subject)
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// Several apps share one component process (dapr run) and one stream
// (streamName), and publish to a new topic at once, so that each instance
// adds it to the stream. nats-server applies updates of one stream that
// arrive together each against the subjects as they were before both: for
// a subject both added, it subscribes the stream to it twice, and stores
// every message published to it twice. The instances of one process change
// a stream one at a time.
func TestInstancesOfOneProcessExtendAStreamOneAtATime(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "EXT", Subjects: []string{"ext.seed"}})
	require.NoError(t, err)
	var instances []*PubSub
	for range 3 {
		ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "EXT"})
		instances = append(instances, ps)
	}
	errs := make(chan error, len(instances))
	for round := 1; round <= 40; round++ {
		topic := fmt.Sprintf("ext.r%d", round)
		for _, ps := range instances {
			go func() { errs <- ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: topic, Data: []byte("x")}) }()
		}
		for range instances {
			require.NoError(t, recv(t, errs, waitFor), "round %d", round)
		}
		require.Equal(t, uint64(round*len(instances)), streamInfo(t, js, "EXT").State.Msgs, "round %d: a message stored twice", round)
	}
}

// A stream whose config holds the topic, itself or by a wildcard, while
// nats-server no longer takes what is published to it: two updates of its
// subjects applied at once, one of them dropping the subject, left the
// server unsubscribed from it (see deafen). Every publish would fail with
// "no response from stream", for as long as the server runs. With
// autoProvision, the component takes the subject out of the stream's
// subjects and puts it back, which subscribes the stream to it again;
// without, the error says what happened and how to fix it.
func TestStreamDeafToAHeldTopicHearsItAgain(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ provision, held string }{{"true", "deaf.t"}, {"true", "deaf.>"}, {"false", "deaf.t"}} {
		t.Run(fmt.Sprintf("autoProvision=%s,subject=%s", c.provision, c.held), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			name := deafen(t, ns, c.held, "deaf.t")
			ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": name, "autoProvision": c.provision})
			err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "deaf.t", Data: []byte("1")})
			if c.provision == "false" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), fmt.Sprintf(`stream %q holds "deaf.t" among its subjects (%s), but nats-server does not take what is published to it`, name, c.held))
				assert.Contains(t, err.Error(), "nats stream edit")
				return
			}
			require.NoError(t, err)
			info := streamInfo(t, js, name)
			assert.Equal(t, uint64(1), info.State.Msgs)
			assert.Contains(t, info.Config.Subjects, c.held)
			_, err = js.Publish(ctx(t), "deaf.t", []byte("2"))
			assert.NoError(t, err, "the stream takes the topic again for every publisher")
		})
	}
}

// deafen creates a stream whose config holds subject while nats-server is
// not subscribed to it, and returns its name: it races updates that keep
// subject with one that drops it, until the server applies them against the
// subjects before any of them, unsubscribes the subject yet ends with a
// config that holds it, and a publish to probe, which subject covers, gets
// no response.
func deafen(t *testing.T, ns *server.Server, subject, probe string) string {
	t.Helper()
	// Each update from a connection of its own, so that nats-server reads
	// them at once.
	var clients []natsjs.JetStream
	for range 4 {
		_, js := natstest.Client(t, ns)
		clients = append(clients, js)
	}
	js := clients[0]
	const tries = 1000
	for try := range tries {
		name := fmt.Sprintf("DEAF%d", try)
		if try > 0 {
			require.NoError(t, js.DeleteStream(ctx(t), fmt.Sprintf("DEAF%d", try-1)))
		}
		cfg := natsjs.StreamConfig{Name: name, Subjects: []string{subject, name + ".base"}, Storage: natsjs.MemoryStorage}
		_, err := js.CreateStream(ctx(t), cfg)
		require.NoError(t, err)
		updates := []natsjs.StreamConfig{cfg}
		updates[0].Subjects = []string{name + ".base"}
		for k := range 3 {
			keeping := cfg
			keeping.Subjects = []string{subject, name + ".base", fmt.Sprintf("%s.kept.%d", name, k)}
			updates = append(updates, keeping)
		}
		var wg sync.WaitGroup
		for i, c := range updates {
			wg.Go(func() { _, _ = clients[i].UpdateStream(ctx(t), c) })
		}
		wg.Wait()
		held := slices.Contains(streamInfo(t, js, name).Config.Subjects, subject)
		if _, err := js.Publish(ctx(t), probe, nil); held && isNoStream(err) {
			return name
		}
	}
	t.Fatalf("nats-server kept taking %q after %d tries at updates applied at once", subject, tries)
	return ""
}

// A subscription to a wildcard after publishes to subjects it covers: the
// stream created for those subjects takes the wildcard in their place,
// keeping its messages; with streamName, the named stream does.
func TestWildcardTakesThePlaceOfCoveredSubjects(t *testing.T) {
	t.Parallel()
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("streamName=%v", named), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			props := map[string]string{"deliverPolicy": "all"}
			if named {
				props["streamName"] = "WILD"
			}
			ps, _ := open(t, ns.ClientURL(), props)
			publish(t, ps, "wild.first", "1", nil)
			// Without streamName a second subject would get a stream of its
			// own, and two streams cannot both take the wildcard.
			second := "wild.first"
			if named {
				second = "wild.second.deep"
			}
			publish(t, ps, second, "2", nil)
			name, err := js.StreamNameBySubject(ctx(t), "wild.first")
			require.NoError(t, err)

			h, ch := collect()
			subscribe(t, ps, "wild.>", nil, h)
			var got []string
			for range 2 {
				got = append(got, string(recv(t, ch, waitFor).Data))
			}
			assert.Equal(t, []string{"1", "2"}, got)
			publish(t, ps, "wild.third", "3", nil)
			assert.Equal(t, "3", string(recv(t, ch, waitFor).Data))
			info := streamInfo(t, js, name)
			assert.Equal(t, []string{"wild.>"}, info.Config.Subjects)
			assert.Equal(t, uint64(3), info.State.Msgs)
			if named {
				assert.Equal(t, "WILD", name)
			}
		})
	}
}

// A wildcard topic whose subjects a stream holds split over several of its
// subjects (orders.* and orders.*.> for orders.>) is that stream's: the
// subscription and publishes use it as it is, with autoProvision on or off.
func TestWildcardHeldBySplitSubjects(t *testing.T) {
	t.Parallel()
	for _, provision := range []string{"true", "false"} {
		t.Run("autoProvision="+provision, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "SPLIT", Subjects: []string{"split.*", "split.*.>"}})
			require.NoError(t, err)
			ps, logs := open(t, ns.ClientURL(), map[string]string{"autoProvision": provision, "consumerID": "app"})
			h, ch := collect()
			subscribe(t, ps, "split.>", nil, h)
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "subscribed to topic") }, waitFor, tick, "log: %s", logs)
			publish(t, ps, "split.a", "1", nil)
			publish(t, ps, "split.a.b", "2", nil)
			got := []string{string(recv(t, ch, waitFor).Data), string(recv(t, ch, waitFor).Data)}
			assert.ElementsMatch(t, []string{"1", "2"}, got, "log: %s", logs)
			assert.Equal(t, []string{"split.*", "split.*.>"}, streamInfo(t, js, "SPLIT").Config.Subjects)
			assert.Equal(t, []string{"SPLIT"}, streamNames(t, js))
		})
	}
}

func TestAutoProvisionOff(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, logs := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})

	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "missing", Data: []byte("x")})
	require.Error(t, err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.ErrorIs(t, err, ErrNoStream)
	assert.Contains(t, err.Error(), `"missing"`)
	assert.Empty(t, streamNames(t, js), "no stream may be created when autoProvision is false")

	// A subscription made before its stream exists keeps trying in the
	// background and starts delivering once an operator creates the stream.
	h, got := collect()
	subscribe(t, ps, "late", nil, h)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "retrying in the background") }, waitFor, tick,
		"the subscription did not report the missing stream")
	assert.Empty(t, streamNames(t, js))

	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "LATE", Subjects: []string{"late"}, Storage: natsjs.MemoryStorage})
	require.NoError(t, err)
	publish(t, ps, "late", "finally", nil)
	m := recv(t, got, waitFor)
	assert.Equal(t, "finally", string(m.Data))
	assert.Equal(t, "LATE", m.Metadata[MetadataStream])
}

func TestBulkPublish(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)

	entries := make([]pubsub.BulkMessageEntry, 10)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprintf("e%d", i), Event: []byte(fmt.Sprintf("m%d", i)), ContentType: "text/plain"}
	}
	entries[4].Metadata = map[string]string{"note": "line1\nline2"}
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "bulk", Entries: entries})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 1)
	assert.Equal(t, "e4", resp.FailedEntries[0].EntryId)
	require.Error(t, resp.FailedEntries[0].Error)
	assert.Equal(t, KindInvalid, KindOf(resp.FailedEntries[0].Error))
	assert.Equal(t, uint64(9), msgCount(t, js, "bulk"))

	// An invalid topic fails every entry, as a request that cannot succeed.
	resp, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "a b", Entries: entries[:3]})
	require.Error(t, err)
	assert.Equal(t, KindInvalid, KindOf(err), "%v", err)
	require.Len(t, resp.FailedEntries, 3)
	var ids []string
	for _, f := range resp.FailedEntries {
		require.Error(t, f.Error)
		assert.Equal(t, KindInvalid, KindOf(f.Error), "%v", f.Error)
		ids = append(ids, f.EntryId)
	}
	slices.Sort(ids)
	assert.Equal(t, []string{"e0", "e1", "e2"}, ids)
	assert.Equal(t, []string{"bulk"}, streamNames(t, js))

	// All good: no error and no failed entries.
	resp, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "bulk", Entries: entries[:3]})
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	assert.Equal(t, uint64(12), msgCount(t, js, "bulk"))
}

func TestInvalidRequests(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	for _, req := range []*pubsub.PublishRequest{
		{Topic: "a b", Data: []byte("x")},
		{Topic: "orders.*", Data: []byte("x")},
		{Topic: "orders", Data: []byte("x"), Metadata: map[string]string{"bad": "a\r\nb"}},
		{Topic: "orders", Data: []byte("x"), Metadata: map[string]string{"bad key": "v"}},
		// nats.go turns a line break in a header value into a space, so
		// these ids would be stored as other ids: "a\r\nb" as "a  b".
		{Topic: "orders", Data: []byte("x"), Metadata: map[string]string{"msgId": "a\r\nb"}},
		{Topic: "orders", Data: []byte("x"), Metadata: map[string]string{"expectedLastMsgId": "a\nb"}},
	} {
		err := ps.Publish(ctx(t), req)
		require.Error(t, err, "%+v", req)
		assert.Equal(t, KindInvalid, KindOf(err), "%v", err)
		var e *Error
		assert.True(t, errors.As(err, &e))
	}
	for _, topic := range []string{"a b", "orders..x", ""} {
		err := ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: topic}, func(context.Context, *pubsub.NewMessage) error { return nil })
		require.Error(t, err, "topic %q", topic)
		assert.Equal(t, KindInvalid, KindOf(err), "%v", err)
	}
	err := ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: "orders", Metadata: map[string]string{"maxInFlight": "0"}}, func(context.Context, *pubsub.NewMessage) error { return nil })
	require.ErrorIs(t, err, metadata.ErrInvalid, "subscription metadata is validated")
	assert.Equal(t, KindInvalid, KindOf(err))
}

// A ttlInSeconds that is not a TTL is refused with the key, the value and
// what is accepted, and nothing is stored: a count of seconds too large for
// a duration must not wrap around to a shorter TTL.
func TestPublishTTLInvalid(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	publish(t, ps, "ttlbad", "first", nil)
	for _, v := range []string{"abc", "0", "-5", "20000000000", "9223372036854775807", "500ms"} {
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "ttlbad", Data: []byte("x"), Metadata: map[string]string{"ttlInSeconds": v}})
		require.Error(t, err, "ttlInSeconds %q", v)
		t.Log(err)
		assert.Equal(t, KindInvalid, KindOf(err))
		for _, s := range []string{"ttlInSeconds", fmt.Sprintf("%q", v), "whole number of seconds"} {
			assert.Contains(t, err.Error(), s)
		}
	}
	assert.Equal(t, uint64(1), msgCount(t, js, "ttlbad"))
}

// An operator moves a topic to another stream (removes its subject from
// one stream and adds it to another, ready for delayed messages), which
// docs/metadata.md says subscriptions follow. A plain publish to the topic
// goes on working, stored in the new stream. A delayed publish must too.
func TestDelayedPublishFollowsATopicMovedToAnotherStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"orders.a", "orders.b"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), nil)
	delayed := map[string]string{"deliverAfter": "1h"}
	publish(t, ps, "orders.a", "before the move", delayed)

	// nats stream edit OLD --subject orders.b --subject '_schedule.OLD.*'
	cfg := streamInfo(t, js, "OLD").Config
	cfg.Subjects = []string{"orders.b", "_schedule.OLD.*"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	// nats stream add NEW --subjects orders.a,'_schedule.NEW.*' --allow-schedules
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"orders.a", "_schedule.NEW.*"}, AllowMsgSchedules: true})
	require.NoError(t, err)

	publish(t, ps, "orders.a", "plain, after the move", nil)
	require.Equal(t, uint64(1), msgCount(t, js, "NEW"), "a plain publish follows the moved topic")

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("delayed, after the move"), Metadata: delayed})
	require.NoError(t, err, "a delayed publish to a topic moved to a stream that allows schedules")
	assert.Equal(t, uint64(2), msgCount(t, js, "NEW"), "the schedule waits in the stream that now holds the topic")
}

// An operator replaces a stream (nats stream rm, then nats stream add with
// the same name and subjects, say from a saved definition that predates
// allow_msg_ttl) while an app publishes with ttlInSeconds. docs/metadata.md:
// with autoProvision on, the component allows per-message TTL on a stream
// when a publish needs it; with it off, the publish is refused
// (FailedPrecondition) naming the stream and allow_msg_ttl, as
// TestPublishTTLRejectedByStreamWithoutMsgTTL shows for a fresh instance.
func TestTTLPublishAfterTheStreamWasReplaced(t *testing.T) {
	t.Parallel()
	for _, auto := range []string{"true", "false"} {
		t.Run("autoProvision "+auto, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			keepAccountStore(t, js)
			stream := natsjs.StreamConfig{Name: "EVENTS", Subjects: []string{"events"}, AllowMsgTTL: true}
			_, err := js.CreateStream(ctx(t), stream)
			require.NoError(t, err)
			ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": auto})
			ttl := map[string]string{"ttlInSeconds": "60"}
			publish(t, ps, "events", "before", ttl)

			require.NoError(t, js.DeleteStream(ctx(t), "EVENTS"))
			stream.AllowMsgTTL = false
			_, err = js.CreateStream(ctx(t), stream)
			require.NoError(t, err)

			err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "events", Data: []byte("after"), Metadata: ttl})
			if auto == "true" {
				require.NoError(t, err, "autoProvision allows per-message TTL on the replaced stream")
				assert.True(t, streamInfo(t, js, "EVENTS").Config.AllowMsgTTL)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrTTLNotAllowed, "%v", err)
			assert.Equal(t, KindRejected, KindOf(err))
			for _, s := range []string{"EVENTS", "allow_msg_ttl"} {
				assert.Contains(t, err.Error(), s)
			}
		})
	}
}

// With autoProvision off, an operator removes a topic's subject from its
// stream (nats stream edit). A Publish to the topic then fails with
// ErrNoStream (FailedPrecondition), naming the stream, its subjects and the
// fix. A BulkPublish must fail each entry the same way.
func TestBulkPublishNamesASubjectRemovedFromItsStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "B", Subjects: []string{"b.a", "b.b"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	_, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "b.a", Entries: textEntries("a", 2)})
	require.NoError(t, err)

	// nats stream edit B --subjects b.b
	cfg := streamInfo(t, js, "B").Config
	cfg.Subjects = []string{"b.b"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "b.a", Entries: textEntries("c", 2)})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 2)
	for _, f := range resp.FailedEntries {
		assert.ErrorIs(t, f.Error, ErrNoStream, "entry %s: %v", f.EntryId, f.Error)
		assert.Equal(t, KindRejected, KindOf(f.Error), "entry %s", f.EntryId)
		assert.Contains(t, f.Error.Error(), `"b.a"`)
	}
}

// With autoProvision on, a publish to a topic that no stream holds creates a
// stream for it, and says so: an operator who removed the topic's subject
// from a stream (nats stream edit) finds in the log where its messages went.
func TestAutoProvisionedStreamIsLogged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "B", Subjects: []string{"b.a", "b.b"}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), nil)
	publish(t, ps, "b.a", "into B", nil)
	assert.NotContains(t, log.String(), "created stream")

	cfg := streamInfo(t, js, "B").Config
	cfg.Subjects = []string{"b.b"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	publish(t, ps, "b.a", "into a new stream", nil)
	assert.Equal(t, uint64(1), msgCount(t, js, "B"))
	assert.Regexp(t, `level=info msg="created stream \\"b_a-[0-9a-f]+\\" with subjects \[b.a\] for topic \\"b.a\\", which no stream held`, log.String())
}

// Several daprds sharing one component process publish to a new topic at
// once: the stream is created once, and the log says so once, not once per
// publish that found no stream.
func TestAutoProvisionedStreamIsLoggedOnce(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	a, logA := open(t, ns.ClientURL(), nil)
	b, logB := open(t, ns.ClientURL(), nil)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 16 {
		ps := a
		if i%2 == 1 {
			ps = b
		}
		wg.Go(func() {
			<-start
			assert.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "once.new", Data: []byte(fmt.Sprint(i))}))
		})
	}
	close(start)
	wg.Wait()
	created := strings.Count(logA.String(), "created stream") + strings.Count(logB.String(), "created stream")
	assert.Equal(t, 1, created, "logs:\n%s\n%s", logA.String(), logB.String())
	name, err := js.StreamNameBySubject(ctx(t), "once.new")
	require.NoError(t, err)
	assert.Equal(t, uint64(16), msgCount(t, js, name))
}

// An operator deletes a topic's stream (nats stream rm) after plain
// publishes. With autoProvision on, the next publish creates it again,
// whatever the publish is: a plain one does (TestBulkPublishAtomicAfterStreamChanged
// shows it for an atomic bulk that found the stream set up before), and so
// must a delayed publish or an atomic bulk that is the first to come after
// the deletion, and the one after it.
func TestDelayedAndAtomicPublishAfterTheStreamWasDeleted(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"delayed", "atomic"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			keepAccountStore(t, js)
			ps, _ := open(t, ns.ClientURL(), nil)
			publish(t, ps, "gone", "plain, before", nil)

			removeStream(t, ns, js, "gone")
			for attempt := 1; attempt <= 2; attempt++ {
				var err error
				if kind == "delayed" {
					err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "gone", Data: []byte("later"), Metadata: map[string]string{"deliverAfter": "1h"}})
				} else {
					_, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "gone", Entries: textEntries("b", 2), Metadata: atomicBulk})
				}
				require.NoError(t, err, "%s publish %d after the stream was deleted, with autoProvision on", kind, attempt)
			}
		})
	}
}

// The component reads its publish metadata keys regardless of case
// (ttlInSeconds, deliverAfter, expected*, bulkPublishAtomic), and keeps
// "msgid" in any case out of the NATS headers. A retried raw publish with
// metadata.MsgId (or msgid) must then be de-duplicated like one with msgId,
// not have its id dropped without a word and be stored twice.
func TestPublishMsgIDKeyCase(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	for _, key := range []string{"MsgId", "msgid", "MSGID"} {
		topic := "case" + key
		md := map[string]string{key: "order-1"}
		publish(t, ps, topic, "order 1", md)
		publish(t, ps, topic, "order 1", md) // daprd's retry after a timeout
		assert.Equal(t, uint64(1), msgCount(t, js, topic), "metadata %s: the retry was stored as a second message", key)
	}
}

// Nats-Msg-Id is "<topic>:<id>", and both a topic and an id may contain
// ":" (ids such as urn:uuid:…, topics such as orders:eu are valid). Two
// different messages, orders with id eu:1 and orders:eu with id 1, in one
// stream, must both be stored: scoping the id to its topic must not make
// them one.
func TestPublishDedupScopeIsUnambiguous(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamName": "SHOP"})
	publish(t, ps, "orders", "order eu:1", map[string]string{"msgId": "eu:1"})
	publish(t, ps, "orders:eu", "order 1 of the eu topic", map[string]string{"msgId": "1"})
	assert.Equal(t, uint64(2), msgCount(t, js, "SHOP"), "a distinct message on another topic was dropped as a duplicate")
}

// Ids are opaque strings, and only a publish again with the same id is
// dropped. nats.go writes a header value trimmed of spaces and tabs at its
// ends and with line breaks turned into spaces, so a Nats-Msg-Id of "a " or
// "a\nb" is stored as that of "a" or "a b": a different message with such an
// id must not be reported published and dropped as a duplicate. Each of
// these publishes is stored, or refused as invalid, naming the key.
func TestPublishMsgIDsThatNATSHeadersRewriteStayApart(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	publishes := []struct {
		data string
		md   map[string]string
	}{
		{"plain", map[string]string{"msgId": "a"}},
		{"trailing space", map[string]string{"msgId": "a "}},
		{"trailing tab", map[string]string{"msgId": "a\t"}},
		{"spaced", map[string]string{"msgId": "a b"}},
		{"line break", map[string]string{"msgId": "a\nb"}},
		{"carriage return", map[string]string{"msgId": "a\rb"}},
		{`{"specversion":"1.0","id":"evt-1","source":"s","type":"t"}`, nil},
		{`{"specversion":"1.0","id":"evt-1 ","source":"s","type":"t"}`, nil},
	}
	stored := uint64(0)
	for _, p := range publishes {
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "ids", Data: []byte(p.data), Metadata: p.md})
		if err != nil {
			t.Log(err)
			assert.Equal(t, KindInvalid, KindOf(err), "%q: %v", p.data, err)
			assert.Contains(t, err.Error(), "id", "%q: the error names the id", p.data)
			continue
		}
		stored++
		assert.Equal(t, stored, msgCount(t, js, "ids"), "%q was reported published, and dropped as a duplicate of another id", p.data)
		stored = msgCount(t, js, "ids")
	}
}

// In a BulkPublish, an entry's own metadata is on top of the request's, and
// publish keys are read in any case: an entry's "msgid" must win over the
// request's "msgId", as its "msgId" does, or every entry gets the request's
// id and all but the first are dropped as duplicates while the call reports
// success.
func TestBulkPublishEntryMetadataWinsInAnyCase(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	for _, key := range []string{"msgId", "msgid", "MSGID"} {
		topic := "entrywins" + key
		entries := textEntries("e", 3)
		for i := range entries {
			entries[i].Metadata = map[string]string{key: fmt.Sprint("own-", i)}
		}
		resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: topic, Entries: entries, Metadata: map[string]string{"msgId": "request-wide"}})
		require.NoError(t, err)
		assert.Empty(t, resp.FailedEntries)
		assert.Equal(t, uint64(3), msgCount(t, js, topic), "entries with their own %s: reported published, and dropped as duplicates of the request's msgId", key)
	}
}

// daprd cancels a publish whose caller went away or whose resiliency
// timeout passed. A Publish or BulkPublish that reports the cancellation
// must not have stored what it reports failed: raw payloads have no id, so
// daprd's or the app's retry stores them a second time.
func TestPublishWithADoneContextStoresNothingItReportsFailed(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	publish(t, ps, "cancelled", "known stream", nil)
	done, cancel := context.WithCancel(t.Context())
	cancel()

	err := ps.Publish(done, &pubsub.PublishRequest{Topic: "cancelled", Data: []byte("reported failed")})
	require.Error(t, err)
	t.Log(err)
	entries := textEntries("c", 20)
	resp, err := ps.BulkPublish(done, &pubsub.BulkPublishRequest{Topic: "cancelled", Entries: entries})
	t.Log(err)
	// On the same connection, so JetStream has handled all of the above
	// once this is acknowledged.
	publish(t, ps, "cancelled", "marker", nil)

	st, err := js.Stream(ctx(t), "cancelled")
	require.NoError(t, err)
	stored := map[string]bool{}
	for seq := uint64(1); seq <= msgCount(t, js, "cancelled"); seq++ {
		m, err := st.GetMsg(ctx(t), seq)
		require.NoError(t, err)
		stored[string(m.Data)] = true
	}
	assert.False(t, stored["reported failed"], "Publish failed, and stored the message")
	var storedButFailed []string
	for _, f := range resp.FailedEntries {
		if stored[f.EntryId] { // an entry's data is its id
			storedButFailed = append(storedButFailed, f.EntryId)
		}
	}
	assert.Empty(t, storedButFailed, "of %d entries reported failed, %d were stored", len(resp.FailedEntries), len(storedButFailed))
}

// JetStream stores a publish but its acknowledgement comes only after the
// deadline (a stream whose leader is slow to answer, say), while the
// connection stays up. docs/behaviour.md: such an error says that the
// message may be stored or not, so that the app retries with the same id
// rather than taking it for lost. So must each entry of a BulkPublish.
func TestPublishWhoseAcknowledgementCameTooLateSaysItMayBeStored(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	publish(t, ps, "lateack", "first", nil)

	// From the acknowledgement of the next message on, what the server
	// sends is lost, and the client does not notice for a while.
	held := px.dropFrom(`{"stream":"lateack","seq":2`)
	pctx, cancel := context.WithTimeout(t.Context(), time.Second)
	err := ps.Publish(pctx, &pubsub.PublishRequest{Topic: "lateack", Data: []byte("late")})
	cancel()
	closedWithin(t, held, waitShort, "the acknowledgement")
	require.Error(t, err)
	t.Log(err)
	require.Equal(t, uint64(2), msgCount(t, js, "lateack"), "JetStream stored the publish")
	assert.Contains(t, err.Error(), "may be stored or not", "the publish was stored, and its error does not say that it may have been")

	reconnect(t, px, ps)
	publish(t, ps, "lateack", "third", nil)
	held = px.dropFrom(`{"stream":"lateack","seq":4`)
	pctx, cancel = context.WithTimeout(t.Context(), time.Second)
	resp, err := ps.BulkPublish(pctx, &pubsub.BulkPublishRequest{Topic: "lateack", Entries: textEntries("e", 2)})
	cancel()
	closedWithin(t, held, waitShort, "the acknowledgement")
	require.Error(t, err)
	require.Equal(t, uint64(5), msgCount(t, js, "lateack"), "JetStream stored the entries")
	require.Len(t, resp.FailedEntries, 2)
	for _, f := range resp.FailedEntries {
		assert.ErrorContains(t, f.Error, "may be stored or not", "entry %s was stored, and its error does not say that it may have been", f.EntryId)
	}
	reconnect(t, px, ps)
}

// reconnect gives ps a new connection through px, whose old one lost what
// the server sent.
func reconnect(t *testing.T, px *proxy, ps *PubSub) {
	t.Helper()
	before := ps.conn().Stats().Reconnects
	px.cut()
	px.restore()
	require.Eventually(t, func() bool { return ps.conn().IsConnected() && ps.conn().Stats().Reconnects > before }, waitFor, tick)
}
