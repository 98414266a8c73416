//lint:file-ignore SA1019 daprd discovers components with v1alpha reflection, so the tests ask it the same way.

package pluggable

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

func props(url string, kv ...string) map[string]string {
	m := map[string]string{"natsURL": url, "reconnectWait": "200ms"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// The tweet app: stream TWITTERCLONE with subjects TWITTERCLONE.*, events
// tweet_created and tweet_liked, durable subscriber go-event-subscriber
// acknowledging each event after handling it.
func TestTweetScenario(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(),
		"streamName", "TWITTERCLONE", "streamSubjects", "TWITTERCLONE.*", "durableName", "go-event-subscriber"))
	require.Contains(t, cl.Features(), pubsub.FeatureBulkPublish)
	require.Contains(t, cl.Features(), pubsub.FeatureMessageTTL)
	require.Contains(t, cl.Features(), pubsub.FeatureSubscribeWildcards)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	box := newInbox()
	for _, topic := range []string{"TWITTERCLONE.tweet_created", "TWITTERCLONE.tweet_liked"} {
		require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, box.handler(nil)))
	}
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "TWITTERCLONE.tweet_created",
		Data: cloudEvent(t, "TWITTERCLONE.tweet_created", "tweet 1: hello")}))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "TWITTERCLONE.tweet_liked",
		Data: cloudEvent(t, "TWITTERCLONE.tweet_liked", "tweet 1 liked")}))
	box.waitFor(t, 2, 10*time.Second)

	got := map[string]string{}
	for _, m := range box.all() {
		got[m.Topic] = dataOf(t, m)
	}
	assert.Equal(t, map[string]string{"TWITTERCLONE.tweet_created": "tweet 1: hello", "TWITTERCLONE.tweet_liked": "tweet 1 liked"}, got)

	_, js := natstest.Client(t, ns)
	st, err := js.Stream(ctx, "TWITTERCLONE")
	require.NoError(t, err)
	assert.Equal(t, []string{"TWITTERCLONE.*"}, st.CachedInfo().Config.Subjects)
	// Both durables exist, every event acknowledged, none delivered twice.
	twitter, err := js.Stream(ctx, "TWITTERCLONE")
	require.NoError(t, err)
	names := twitter.ConsumerNames(ctx)
	var durables []string
	for n := range names.Name() {
		durables = append(durables, n)
	}
	assert.Len(t, durables, 2)
	require.Eventually(t, func() bool {
		for _, d := range durables {
			info, err := twitter.Consumer(ctx, d)
			if err != nil {
				return false
			}
			ci, err := info.Info(ctx)
			if err != nil || ci.NumAckPending != 0 || ci.Delivered.Consumer != 1 {
				return false
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // a window for a duplicate to show, not a wait
	assert.Equal(t, 2, box.len(), "each event exactly once")
}

func TestOneDurableNameServesTwoTopics(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "durableName", "shared"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := newInbox(), newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "orders"}, a.handler(nil)))
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "payments"}, b.handler(nil)))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "orders", Data: []byte("o1")}))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "payments", Data: []byte("p1")}))
	a.waitFor(t, 1, 10*time.Second)
	b.waitFor(t, 1, 10*time.Second)
	assert.Equal(t, "o1", string(a.all()[0].Data))
	assert.Equal(t, "p1", string(b.all()[0].Data))
}

// Two replicas of one app (same consumerID, each with its own component
// process) share one durable and compete: each message is handled once.
func TestSameConsumerIDCompetes(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handled sync.Map
	var dup, total atomic.Int64
	var perReplica [2]atomic.Int64
	for i := range 2 {
		c := startComponent(t, "nats-jetstream")
		cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "orders-app", "maxInFlight", "4"))
		require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "orders"}, func(_ context.Context, m *pubsub.NewMessage) error {
			if _, loaded := handled.LoadOrStore(string(m.Data), true); loaded {
				dup.Add(1)
			}
			perReplica[i].Add(1)
			total.Add(1)
			time.Sleep(2 * time.Millisecond)
			return nil
		}))
	}
	pub := daprClient(t, startComponent(t, "nats-jetstream"), "pubsub", props(ns.ClientURL()))
	const n = 200
	for i := range n {
		require.NoError(t, pub.Publish(ctx, &pubsub.PublishRequest{Topic: "orders", Data: fmt.Appendf(nil, "m%d", i)}))
	}
	require.Eventually(t, func() bool { return total.Load() >= n }, 20*time.Second, 20*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // a window for a duplicate to show, not a wait
	assert.EqualValues(t, n, total.Load())
	assert.Zero(t, dup.Load())
	assert.Positive(t, perReplica[0].Load(), "replica 0 got work")
	assert.Positive(t, perReplica[1].Load(), "replica 1 got work")
}

func TestDifferentConsumerIDsEachReceiveAll(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := daprClient(t, c, "app-a", props(ns.ClientURL(), "consumerID", "app-a"))
	b := daprClient(t, c, "app-b", props(ns.ClientURL(), "consumerID", "app-b"))
	ba, bb := newInbox(), newInbox()
	require.NoError(t, a.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "news"}, ba.handler(nil)))
	require.NoError(t, b.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "news"}, bb.handler(nil)))
	for i := range 5 {
		require.NoError(t, a.Publish(ctx, &pubsub.PublishRequest{Topic: "news", Data: fmt.Appendf(nil, "n%d", i)}))
	}
	ba.waitFor(t, 5, 10*time.Second)
	bb.waitFor(t, 5, 10*time.Second)
}

func TestNakRedelivers(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var tries atomic.Int64
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "jobs"}, box.handler(func(*pubsub.NewMessage) error {
		if tries.Add(1) == 1 {
			return fmt.Errorf("app failed")
		}
		return nil
	})))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "jobs", Data: []byte("j")}))
	box.waitFor(t, 1, 10*time.Second)
	assert.EqualValues(t, 2, tries.Load())
	assert.Equal(t, "2", box.all()[0].Metadata["jetstream-deliveries"])
}

// With ackPolicy all, acknowledging a message acknowledges every earlier one
// too. A message the app fails comes again after nakDelay; meanwhile the next
// one is delivered and handled, and its ack must not take the failed one
// along.
func TestAckAllFailedMessageComesAgainAfterNakDelay(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app", "ackPolicy", "all", "nakDelay", "1s", "deliverAll", "true"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, data := range []string{"first", "second"} {
		require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "allacks", Data: []byte(data)}))
	}
	var failed atomic.Bool
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "allacks"}, box.handler(func(m *pubsub.NewMessage) error {
		if string(m.Data) == "first" && failed.CompareAndSwap(false, true) {
			return fmt.Errorf("app failed")
		}
		return nil
	})))
	handled := func() []string {
		var out []string
		for _, m := range box.all() {
			out = append(out, string(m.Data))
		}
		return out
	}
	if !assert.Eventually(t, func() bool { return box.len() == 2 }, 15*time.Second, 20*time.Millisecond) {
		t.Fatalf("the message the app failed never came again; the app handled only %v: the ack of the later message acknowledged it too (ackPolicy all) while it waited out nakDelay", handled())
	}
	assert.ElementsMatch(t, []string{"first", "second"}, handled())
}

func TestHeadersBothWays(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, js := natstest.Client(t, ns)
	raw, err := nc.SubscribeSync("events")
	require.NoError(t, err)
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "events"}, box.handler(nil)))

	// Dapr → NATS: request metadata becomes headers; Dapr's own keys do not.
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "events", Data: []byte("from dapr"),
		Metadata: map[string]string{"traceparent": "00-abc-def-01", "tenant": "acme", "rawPayload": "true"}}))
	m, err := raw.NextMsg(5 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "00-abc-def-01", m.Header.Get("traceparent"))
	assert.Equal(t, "acme", m.Header.Get("tenant"))
	assert.Empty(t, m.Header.Get("rawPayload"))

	// NATS → Dapr: headers of a plain NATS publisher arrive as metadata.
	msg := nats.NewMsg("events")
	msg.Data = []byte("from nats")
	msg.Header.Set("x-origin", "legacy-service")
	_, err = js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	box.waitFor(t, 2, 10*time.Second)
	var fromNATS *pubsub.NewMessage
	for _, m := range box.all() {
		if string(m.Data) == "from nats" {
			fromNATS = m
		}
	}
	require.NotNil(t, fromNATS)
	assert.Equal(t, "legacy-service", fromNATS.Metadata["x-origin"])
	assert.Equal(t, "events", fromNATS.Metadata["jetstream-subject"])
	assert.Equal(t, "acme", box.all()[0].Metadata["tenant"])
}

func TestDedupByCloudEventID(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL()))
	ctx := context.Background()
	ev := cloudEvent(t, "dedup", "once")
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "dedup", Data: ev}))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "dedup", Data: ev}))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "dedup", Data: cloudEvent(t, "dedup", "other")}))
	_, js := natstest.Client(t, ns)
	name, err := js.StreamNameBySubject(ctx, "dedup")
	require.NoError(t, err)
	st, err := js.Stream(ctx, name)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, info.State.Msgs)
}

func TestAutoProvisionOffWaitsForStream(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "autoProvision", "false", "consumerID", "app"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	err := cl.Publish(ctx, &pubsub.PublishRequest{Topic: "manual.orders", Data: []byte("x")})
	require.Error(t, err)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err))
	assert.Contains(t, err.Error(), "manual.orders")

	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "manual.orders"}, box.handler(nil)))
	_, js := natstest.Client(t, ns)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "MANUAL", Subjects: []string{"manual.>"}})
	require.NoError(t, err)
	// The subscription retries in the background and picks the stream up.
	require.Eventually(t, func() bool {
		return cl.Publish(ctx, &pubsub.PublishRequest{Topic: "manual.orders", Data: []byte("x")}) == nil
	}, 10*time.Second, 100*time.Millisecond)
	box.waitFor(t, 1, 15*time.Second)
	_, err = js.Stream(ctx, "manual_orders")
	assert.ErrorIs(t, err, jetstream.ErrStreamNotFound, "no stream was created")
}

func TestAutoProvisionCreatesStream(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "fresh"}, box.handler(nil)))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "fresh", Data: []byte("x")}))
	box.waitFor(t, 1, 10*time.Second)
	_, js := natstest.Client(t, ns)
	st, err := js.Stream(ctx, "fresh")
	require.NoError(t, err)
	assert.Equal(t, []string{"fresh"}, st.CachedInfo().Config.Subjects)
	assert.True(t, st.CachedInfo().Config.AllowMsgTTL)
}

func TestWildcardSubscription(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app", "streamName", "SHOP", "streamSubjects", "shop.>"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "shop.*"}, box.handler(nil)))
	for _, topic := range []string{"shop.orders", "shop.refunds", "shop.deep.nested"} {
		require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: topic, Data: []byte(topic)}))
	}
	box.waitFor(t, 2, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // a window for the nested subject to show, not a wait
	var subjects []string
	for _, m := range box.all() {
		subjects = append(subjects, m.Metadata["jetstream-subject"])
	}
	assert.ElementsMatch(t, []string{"shop.orders", "shop.refunds"}, subjects)
}

func TestBulkPublishReportsTheBadEntry(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL()))
	bp, ok := cl.(pubsub.BulkPublisher)
	require.True(t, ok)
	entries := make([]pubsub.BulkMessageEntry, 5)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprint("e", i), Event: fmt.Appendf(nil, "m%d", i), ContentType: "text/plain"}
	}
	entries[3].Metadata = map[string]string{"bad header": "x"}
	// A failed entry makes the call fail: daprd's client would turn a
	// response into success, and its HTTP API would answer 204. The status
	// names the entry and carries the failed entries as a detail.
	_, err := bp.BulkPublish(context.Background(), &pubsub.BulkPublishRequest{Topic: "bulk", Entries: entries})
	require.Error(t, err)
	stErr := status.Convert(err)
	assert.Equal(t, codes.InvalidArgument, stErr.Code())
	assert.Contains(t, stErr.Message(), `entry "e3"`)
	assert.Contains(t, stErr.Message(), "bad header")
	require.Len(t, stErr.Details(), 1)
	detail, ok := stErr.Details()[0].(*proto.BulkPublishResponse)
	require.True(t, ok, "detail is %T", stErr.Details()[0])
	require.Len(t, detail.GetFailedEntries(), 1)
	assert.Equal(t, "e3", detail.GetFailedEntries()[0].GetEntryId())
	assert.Contains(t, detail.GetFailedEntries()[0].GetError(), "bad header")

	_, js := natstest.Client(t, ns)
	st, err := js.Stream(context.Background(), "bulk")
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 4, info.State.Msgs)

	// A batch that cannot be published at all is not reported as a success.
	resp, err := bp.BulkPublish(context.Background(), &pubsub.BulkPublishRequest{Topic: "bad topic", Entries: entries[:2]})
	if err == nil {
		assert.Len(t, resp.FailedEntries, 2)
	}
}

// A BulkPublish whose entries each fit the server's max_payload (1 MB) is
// stored, whatever its total: daprd's client sends it whole, with no limit
// of its own, so gRPC's default 4 MiB limit on what the component receives
// must not refuse it as ResourceExhausted, with no word on the fix, before
// any entry is looked at.
func TestBulkPublishLargerThanGRPCsDefaultLimit(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL()))
	bp, ok := cl.(pubsub.BulkPublisher)
	require.True(t, ok)
	entries := make([]pubsub.BulkMessageEntry, 5)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprint("e", i), Event: make([]byte, 900_000), ContentType: "application/octet-stream"}
	}
	resp, err := bp.BulkPublish(context.Background(), &pubsub.BulkPublishRequest{Topic: "large", Entries: entries})
	require.NoError(t, err, "code %s", status.Code(err))
	assert.Empty(t, resp.FailedEntries)
	assert.EqualValues(t, 5, storedMsgs(t, ns, "large"))
}

// storedMsgs is the number of messages stream holds.
func storedMsgs(t *testing.T, ns *server.Server, stream string) uint64 {
	t.Helper()
	_, js := natstest.Client(t, ns)
	st, err := js.Stream(context.Background(), stream)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

// rawPull opens PullMessages with the generated client, as daprd does, to
// send frames daprd's client never sends.
func rawPull(t *testing.T, c *component, instance, topic string, md map[string]string) (proto.PubSub_PullMessagesClient, context.CancelFunc) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, instance))
	stream, err := proto.NewPubSubClient(conn).PullMessages(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: topic, Metadata: md}}))
	return stream, cancel
}

func TestDuplicateLateAndUnknownAcksAreIgnored(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	stream, cancel := rawPull(t, c, "pubsub", "acks", nil)
	defer cancel()
	_, js := natstest.Client(t, ns)
	natstest.WaitConsumer(t, js, "acks", "app-acks")
	ctx := context.Background()
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "acks", Data: []byte("one")}))
	m, err := stream.Recv()
	require.NoError(t, err)
	require.NotEmpty(t, m.GetId())
	for range 3 {
		require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))
	}
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: "no-such-id", AckError: &proto.AckMessageError{Message: "x"}}))
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{}))
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "other"}}))
	// The stream still works after all that.
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "acks", Data: []byte("two")}))
	m2, err := stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, "two", string(m2.GetData()))
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: m2.GetId()}))
}

// When daprd's stream goes away, what it had not acknowledged returns to
// JetStream at once and reaches the next subscriber of the same durable.
func TestStreamEndGivesUnackedMessagesBack(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	stream, cancel := rawPull(t, c, "pubsub", "handover", nil)
	_, js := natstest.Client(t, ns)
	natstest.WaitConsumer(t, js, "handover", "app-handover")
	ctx := context.Background()
	for i := range 3 {
		require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "handover", Data: fmt.Appendf(nil, "h%d", i)}))
	}
	for range 3 {
		_, err := stream.Recv()
		require.NoError(t, err)
	}
	cancel() // no acks sent

	start := time.Now()
	box := newInbox()
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	require.NoError(t, cl.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "handover"}, box.handler(nil)))
	box.waitFor(t, 3, 10*time.Second)
	assert.Less(t, time.Since(start), 10*time.Second, "well before the 30s ack wait")
}

func TestPauseAndResume(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app"))
	pausable := cl.(pubsub.PausableSubscriber)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "pausing"}, box.handler(nil)))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "pausing", Data: []byte("before")}))
	box.waitFor(t, 1, 10*time.Second)

	require.NoError(t, pausable.Pause(ctx))
	require.NoError(t, pausable.Pause(ctx), "idempotent")
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "pausing", Data: []byte("during")}))
	time.Sleep(time.Second) // a window for a delivery while paused to show, not a wait
	assert.Equal(t, 1, box.len(), "nothing delivered while paused")

	require.NoError(t, pausable.Resume(ctx))
	box.waitFor(t, 2, 10*time.Second)
	assert.Equal(t, "during", string(box.all()[1].Data))
}

func TestPingFollowsNATS(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	daprClient(t, c, "pubsub", props(ns.ClientURL()))
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := proto.NewPubSubClient(conn)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "pubsub")
	_, err = client.Ping(ctx, &proto.PingRequest{})
	require.NoError(t, err)
	natstest.Stop(ns)
	require.Eventually(t, func() bool {
		_, err := client.Ping(ctx, &proto.PingRequest{})
		return status.Code(err) == codes.Unavailable
	}, 10*time.Second, 100*time.Millisecond)
}

func TestInitRejectsBadMetadata(t *testing.T) {
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "good", props("nats://127.0.0.1:1"))
	_ = cl
	bad := map[string]string{"natsURL": "nats://127.0.0.1:1", "deliverPolicy": "new", "startSequence": "5", "token": "s3cret-token"}
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "bad")
	_, err = proto.NewPubSubClient(conn).Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: bad}})
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.Contains(t, err.Error(), "deliverPolicy")
	assert.Contains(t, err.Error(), "startSequence")
	assert.NotContains(t, err.Error(), "s3cret-token")
}

// One process serves several Component YAMLs, told apart by x-component-instance.
func TestInstancesAreSeparate(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	a := daprClient(t, c, "orders-pubsub", props(ns.ClientURL(), "streamName", "ORDERS", "consumerID", "app"))
	b := daprClient(t, c, "audit-pubsub", props(ns.ClientURL(), "streamName", "AUDIT", "consumerID", "app"))
	ctx := context.Background()
	require.NoError(t, a.Publish(ctx, &pubsub.PublishRequest{Topic: "orders.new", Data: []byte("a")}))
	require.NoError(t, b.Publish(ctx, &pubsub.PublishRequest{Topic: "audit.log", Data: []byte("b")}))
	_, js := natstest.Client(t, ns)
	for stream, subject := range map[string]string{"ORDERS": "orders.new", "AUDIT": "audit.log"} {
		st, err := js.Stream(ctx, stream)
		require.NoError(t, err)
		assert.Equal(t, []string{subject}, st.CachedInfo().Config.Subjects)
	}
}

func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	o := Options{SocketFolder: dir, SocketName: "nats-jetstream", Logger: testLog}

	// A stale socket from a crashed run is replaced.
	stale, err := net.Listen("unix", sockPath(dir, "nats-jetstream"))
	require.NoError(t, err)
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, stale.Close())
	l, path, err := Listen(o)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "0660: not world-writable")
	assert.NotZero(t, fi.Mode()&os.ModeSocket)

	// A socket that is still served is not taken over.
	_, _, err = Listen(o)
	require.ErrorContains(t, err, "served by another process")
	require.NoError(t, l.Close())
	_, err = os.Stat(path)
	assert.True(t, os.IsNotExist(err), "closing removes the socket")

	// A regular file in the way is never removed.
	require.NoError(t, os.WriteFile(path, []byte("keep me"), 0o600))
	_, _, err = Listen(o)
	require.ErrorContains(t, err, "not a socket")

	_, _, err = Listen(Options{SocketFolder: dir, SocketName: "jetstream"})
	require.ErrorContains(t, err, "built-in")
	_, _, err = Listen(Options{SocketFolder: dir, SocketName: "x", SocketMode: 0o666})
	require.ErrorContains(t, err, "0660 or stricter")
}

func TestReflectionListsPubSub(t *testing.T) {
	c := startComponent(t, "nats-jetstream")
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	require.NoError(t, err)
	require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	assert.Contains(t, names, "dapr.proto.components.v1.PubSub")
	require.NoError(t, stream.CloseSend())
	assert.False(t, strings.Contains(strings.Join(names, ","), "jetstream"))
}

// At most maxInFlight messages are outstanding to daprd; here the limit comes
// from the subscription's own metadata, overriding the component's.
func TestInFlightWindowFromSubscriptionMetadata(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "50"))
	stream, cancel := rawPull(t, c, "pubsub", "window", map[string]string{"maxInFlight": "3"})
	defer cancel()
	_, js := natstest.Client(t, ns)
	natstest.WaitConsumer(t, js, "window", "app-window")
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "window", Data: fmt.Appendf(nil, "w%d", i)}))
	}
	recv := make(chan *proto.PullMessagesResponse, 10)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				close(recv)
				return
			}
			recv <- m
		}
	}()
	var held []*proto.PullMessagesResponse
	for range 3 {
		held = append(held, natstest.Recv(t, recv, 10*time.Second))
	}
	natstest.Nothing(t, recv, 700*time.Millisecond) // a 4th message with 3 unacknowledged
	// The window refills once half of it is free, one pull request for both.
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: held[0].GetId()}))
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: held[1].GetId()}))
	for _, want := range []string{"w3", "w4"} {
		m := natstest.Recv(t, recv, 10*time.Second) // the acks freed the window
		assert.Equal(t, want, string(m.GetData()), "in order")
	}
	natstest.Nothing(t, recv, 500*time.Millisecond) // a message beyond the window
}

// A NATS publisher may send a subject or header that is not UTF-8, which
// protobuf cannot carry: it arrives with U+FFFD in place of the bad bytes,
// and the subscription goes on.
func TestInvalidUTF8FromNATSIsDelivered(t *testing.T) {
	ns := natstest.Start(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app", "streamName", "LEGACY", "streamSubjects", "legacy.>"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, js := natstest.Client(t, ns)
	box := newInbox()
	require.NoError(t, cl.Subscribe(ctx, pubsub.SubscribeRequest{Topic: "legacy.>"}, box.handler(nil)))
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "legacy.first", Data: []byte("first")}))
	box.waitFor(t, 1, 10*time.Second)

	msg := nats.NewMsg("legacy.caf\xe9")
	msg.Data = []byte("latin-1 \xe9")
	msg.Header.Set("x-name", "Jos\xe9")
	_, err := js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "legacy.last", Data: []byte("last")}))
	box.waitFor(t, 3, 10*time.Second)

	got := box.all()
	assert.Equal(t, "latin-1 \xe9", string(got[1].Data), "data is bytes and arrives as it was sent")
	assert.Equal(t, "Jos\uFFFD", got[1].Metadata["x-name"])
	assert.Equal(t, "legacy.caf\uFFFD", got[1].Metadata["jetstream-subject"])
	assert.Equal(t, "last", dataOf(t, got[2]))
}

// Messages that daprd never read must reach the next stream of the same
// consumer without using up maxDeliver, when daprd's stream breaks or the
// Component is initialised again, also by a hot reload that names the same
// NATS server another way in natsURL (a DNS name for its address, say).
// Large messages stay inside the component, held back by gRPC flow control.
func TestUnreadMessagesReachTheNextStream(t *testing.T) {
	for _, how := range []string{"stream cut", "re-Init", "re-Init with natsURL spelled another way"} {
		for _, maxDeliver := range []string{"1", "3"} {
			for _, size := range []int{16, 512 << 10} {
				t.Run(fmt.Sprintf("%s/maxDeliver=%s/size=%d", how, maxDeliver, size), func(t *testing.T) {
					ns := natstest.Start(t)
					_, js := natstest.Client(t, ns)
					c := startComponent(t, "nats-jetstream")
					md := props(ns.ClientURL(), "consumerID", "app", "maxDeliver", maxDeliver, "maxInFlight", "10")
					cl := daprClient(t, c, "pubsub", md)
					first, cancel := rawPull(t, c, "pubsub", "unread", nil)
					defer cancel()
					require.Eventually(t, func() bool {
						_, err := js.Consumer(context.Background(), "unread", "app-unread")
						return err == nil
					}, 10*time.Second, 20*time.Millisecond)
					ctx := context.Background()
					pad := strings.Repeat("x", size)
					for i := range 5 {
						require.NoError(t, cl.Publish(ctx, &pubsub.PublishRequest{Topic: "unread", Data: fmt.Appendf(nil, "u%d:%s", i, pad)}))
					}
					_, err := first.Recv()
					require.NoError(t, err)
					require.Eventually(t, func() bool {
						cons, err := js.Consumer(context.Background(), "unread", "app-unread")
						if err != nil {
							return false
						}
						info, err := cons.Info(context.Background())
						return err == nil && info.NumPending == 0
					}, 10*time.Second, 20*time.Millisecond, "the component did not fetch the backlog")

					switch how {
					case "stream cut":
						cancel()
					case "re-Init":
						daprClient(t, c, "pubsub", md)
					default:
						reloaded := maps.Clone(md)
						reloaded["natsURL"] = strings.Replace(ns.ClientURL(), "127.0.0.1", "localhost", 1)
						daprClient(t, c, "pubsub", reloaded)
					}
					next, cancelNext := rawPull(t, c, "pubsub", "unread", nil)
					defer cancelNext()
					// A message that never comes ends the stream, so that Recv fails.
					defer time.AfterFunc(20*time.Second, cancelNext).Stop()
					seen := map[string]bool{}
					for len(seen) < 5 {
						m, err := next.Recv()
						require.NoError(t, err, "after %d of 5 messages", len(seen))
						seen[string(m.GetData()[:2])] = true
						require.NoError(t, next.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))
					}
					cons, err := js.Consumer(ctx, "unread", "app-unread")
					require.NoError(t, err)
					require.Eventually(t, func() bool {
						info, err := cons.Info(ctx)
						return err == nil && info.NumAckPending == 0 && info.AckFloor.Stream == 5
					}, 10*time.Second, 20*time.Millisecond)
				})
			}
		}
	}
}

// An Init still connecting when Shutdown starts must not leave its instance
// open behind the shutdown.
func TestInitRacingShutdownLeavesNothingOpen(t *testing.T) {
	// A listener that accepts and never answers keeps Init connecting.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	defer func() {
		for len(accepted) > 0 {
			_ = (<-accepted).Close()
		}
	}()

	srv := NewServer(testLog)
	ctx := grpcmd.NewIncomingContext(context.Background(), grpcmd.Pairs(InstanceHeader, "racing"))
	initErr := make(chan error, 1)
	go func() {
		_, err := srv.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props("nats://" + ln.Addr().String())}})
		initErr <- err
	}()
	first := <-accepted // Init is connecting now
	accepted <- first
	srv.Shutdown(time.Second)

	err = <-initErr
	require.Error(t, err, "Init finished after Shutdown began")
	assert.Equal(t, codes.Unavailable, status.Code(err))
	srv.mu.Lock()
	defer srv.mu.Unlock()
	assert.Empty(t, srv.instances, "an instance was left open after Shutdown")
}

// A publish that reaches an instance Shutdown has closed (daprd's API serves
// on while the gRPC server stops) says that the component is shutting down
// and what to do, not the bare "jetstream pubsub: closed"; so does each entry
// of a bulk publish.
func TestPublishAfterShutdownSaysSo(t *testing.T) {
	ns := natstest.Start(t)
	srv := NewServer(testLog)
	ctx := grpcmd.NewIncomingContext(context.Background(), grpcmd.Pairs(InstanceHeader, "closing"))
	_, err := srv.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props(ns.ClientURL())}})
	require.NoError(t, err)
	srv.Shutdown(0)

	_, err = srv.Publish(ctx, &proto.PublishRequest{Topic: "late", Data: []byte("x")})
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Equal(t, closedByShutdown, status.Convert(err).Message())

	_, err = srv.BulkPublish(ctx, &proto.BulkPublishRequest{Topic: "late", Entries: []*proto.BulkMessageEntry{{EntryId: "1", Event: []byte("x")}}})
	st := status.Convert(err)
	assert.Equal(t, codes.Unavailable, st.Code())
	assert.Equal(t, closedByShutdown, st.Message())
	require.Len(t, st.Details(), 1)
	failed := st.Details()[0].(*proto.BulkPublishResponse).GetFailedEntries()
	require.Len(t, failed, 1)
	assert.Equal(t, closedByShutdown, failed[0].GetError())
}

// daprd initialises its Component again (a hot reload) while a publish is
// under way: the publish looked up the old instance, which the new Init
// closed before the publish sent anything. It goes to the new instance
// rather than failing with the bare "closed"; so does a bulk publish.
func TestPublishRacingReInitGoesToTheNewInstance(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	srv := NewServer(testLog)
	t.Cleanup(func() { srv.Shutdown(0) })
	ctx := grpcmd.NewIncomingContext(context.Background(), grpcmd.Pairs(InstanceHeader, "reloaded"))
	initialise := func() {
		_, err := srv.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props(ns.ClientURL())}})
		require.NoError(t, err)
	}
	initialise()
	old, _, err := srv.instance(ctx)
	require.NoError(t, err)
	initialise()

	require.NoError(t, srv.publishOn(ctx, old, &pubsub.PublishRequest{Topic: "reloaded", Data: []byte("x")}))
	resp, err := srv.bulkPublishOn(ctx, old, &pubsub.BulkPublishRequest{Topic: "reloaded", Entries: []pubsub.BulkMessageEntry{{EntryId: "1", Event: []byte("y"), ContentType: "text/plain"}}})
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	st, err := js.Stream(context.Background(), "reloaded")
	require.NoError(t, err)
	assert.Equal(t, uint64(2), st.CachedInfo().State.Msgs)
}

// A daprd that stopped reading (a slow app and large messages fill the gRPC
// window) must not hold up shutdown: it ends within the drain bound plus a
// small grace, and what daprd never acknowledged goes back to JetStream.
func TestShutdownIsBoundedWhenDaprdStopsReading(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	c := startComponent(t, "nats-jetstream") // drain bound 2s
	cl := daprClient(t, c, "pubsub", props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "20"))
	stream, cancel := rawPull(t, c, "pubsub", "stalled", nil)
	defer cancel()
	require.Eventually(t, func() bool {
		_, err := js.Consumer(context.Background(), "stalled", "app-stalled")
		return err == nil
	}, 10*time.Second, 20*time.Millisecond)
	pad := strings.Repeat("x", 512<<10)
	for i := range 20 {
		require.NoError(t, cl.Publish(context.Background(), &pubsub.PublishRequest{Topic: "stalled", Data: fmt.Appendf(nil, "s%d:%s", i, pad)}))
	}
	_, err := stream.Recv() // one read, then daprd stops reading
	require.NoError(t, err)
	cons, err := js.Consumer(context.Background(), "stalled", "app-stalled")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0
	}, 10*time.Second, 20*time.Millisecond, "the component did not take the backlog")

	start := time.Now()
	c.stop()
	select {
	case err := <-c.done:
		c.done <- err // for the cleanup's shutdown
	case <-time.After(2*time.Second + 8*time.Second):
		t.Fatalf("shutdown did not end within the drain bound plus 8s")
	}
	t.Logf("shut down in %s", time.Since(start).Round(time.Millisecond))
	// Given back, they come again at once, long before the 30s ack wait.
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 20 && time.Now().Before(deadline) {
		batch, err := cons.Fetch(20, jetstream.FetchMaxWait(time.Second))
		require.NoError(t, err)
		for m := range batch.Messages() {
			seen[string(m.Data()[:3])] = true
			require.NoError(t, m.Ack())
		}
	}
	assert.Len(t, seen, 20, "the unacknowledged messages did not go back to JetStream")
}

// With natsURL pointing where nothing listens, Init succeeds (the component
// connects in the background) and publishing fails at once with Unavailable,
// naming the URL, rather than after the caller's deadline.
func TestPublishWithUnreachableNATSIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	url := "nats://" + addr

	c := startComponent(t, "nats-jetstream")
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	cl := proto.NewPubSubClient(conn)
	call := func() context.Context {
		ctx, cancel := context.WithTimeout(grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "unreachable"), 20*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	_, err = cl.Init(call(), &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props(url)}})
	require.NoError(t, err, "Init does not wait for NATS")

	start := time.Now()
	_, err = cl.Publish(call(), &proto.PublishRequest{PubsubName: "pubsub", Topic: "TWITTERCLONE.tweets", Data: []byte("hi")})
	took := time.Since(start)
	t.Logf("Publish failed after %s: %v", took, err)
	assert.Less(t, took, time.Second, "Publish waited instead of failing fast")
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "NATS at "+url)

	start = time.Now()
	_, err = cl.BulkPublish(call(), &proto.BulkPublishRequest{PubsubName: "pubsub", Topic: "TWITTERCLONE.tweets", Entries: []*proto.BulkMessageEntry{
		{EntryId: "1", Event: []byte("one"), ContentType: "text/plain"},
		{EntryId: "2", Event: []byte("two"), ContentType: "text/plain"},
	}})
	took = time.Since(start)
	t.Logf("BulkPublish failed after %s: %v", took, err)
	assert.Less(t, took, time.Second, "BulkPublish waited instead of failing fast")
	assert.Equal(t, codes.Unavailable, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "NATS at "+url)
	var failed int
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*proto.BulkPublishResponse); ok {
			failed = len(r.GetFailedEntries())
		}
	}
	assert.Equal(t, 2, failed, "every entry is reported failed")
}

// restartable is a nats-server with file storage that a test stops and
// starts again on the same port, with its state, as in an outage.
type restartable struct {
	t    *testing.T
	opts server.Options
	ns   *server.Server
	url  string
}

func startRestartable(t *testing.T) *restartable {
	t.Helper()
	var o *server.Options
	ns := natstest.Start(t, func(op *server.Options) { o = op })
	opts := *o
	opts.Port = ns.Addr().(*net.TCPAddr).Port
	return &restartable{t: t, opts: opts, ns: ns, url: ns.ClientURL()}
}

func (r *restartable) down() { natstest.Stop(r.ns) }

func (r *restartable) up() {
	r.t.Helper()
	opts := r.opts
	ns := natstest.Run(r.t, &opts)
	r.t.Cleanup(func() { natstest.Stop(ns) })
	r.ns = ns
}

// publishWhenBack publishes data to topic, retrying while NATS is not back.
func publishWhenBack(t *testing.T, cl pubsub.PubSub, topic, data string) {
	t.Helper()
	var err error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = cl.Publish(ctx, &pubsub.PublishRequest{Topic: topic, Data: []byte(data)})
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("publish %q to %q never succeeded: %v", data, topic, err)
}

// rawReader reads a PullMessages stream, noting each message's data, and
// acks what it reads when ack is set.
type rawReader struct {
	mu   sync.Mutex
	seen map[string]int
}

func readRaw(stream proto.PubSub_PullMessagesClient, ack bool) *rawReader {
	r := &rawReader{seen: map[string]int{}}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.seen[string(m.GetData())]++
			r.mu.Unlock()
			if ack {
				_ = stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()})
			}
		}
	}()
	return r
}

func (r *rawReader) has(want []string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range want {
		if r.seen[w] == 0 {
			return false
		}
	}
	return true
}

func (r *rawReader) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.seen)
}

// daprd's stream ends as NATS goes away for a moment, and a new stream opens
// once it is back: what the first stream held and had not acknowledged
// reaches the new one within about a second of NATS coming back.
func TestOutageShortStreamEndHeldMessagesResumeSoon(t *testing.T) {
	r := startRestartable(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(r.url, "consumerID", "app", "maxInFlight", "10"))
	first, cancelFirst := rawPull(t, c, "pubsub", "blip", nil)
	defer cancelFirst()
	_, js := natstest.Client(t, r.ns)
	natstest.WaitConsumer(t, js, "blip", "app-blip")
	held := readRaw(first, false)
	var want []string
	for i := range 3 {
		d := fmt.Sprintf("held%d", i)
		publishWhenBack(t, cl, "blip", d)
		want = append(want, d)
	}
	require.Eventually(t, func() bool { return held.has(want) }, 10*time.Second, 10*time.Millisecond)

	r.down()
	cancelFirst()
	time.Sleep(time.Second) // the outage itself
	r.up()
	upAt := time.Now()
	s, cancel := rawPull(t, c, "pubsub", "blip", nil)
	defer cancel()
	next := readRaw(s, true)
	require.Eventually(t, func() bool { return next.has(want) }, 20*time.Second, 10*time.Millisecond, "got %s", next)
	took := time.Since(upAt)
	assert.Less(t, took, 2*time.Second, "the messages the first stream held reached the new one %s after NATS was back", took.Round(time.Millisecond))
}

// With maxDeliver 1, daprd pauses while NATS is away, with messages still
// held unseen in the component (daprd is busy with one), and the outage
// lasts longer than 30 s: after NATS is back and daprd resumes, every
// message still reaches the app.
func TestOutageLongPauseMaxDeliverOne(t *testing.T) {
	t.Parallel()
	r := startRestartable(t)
	c := startComponent(t, "nats-jetstream")
	cl := daprClient(t, c, "pubsub", props(r.url, "consumerID", "app", "maxInFlight", "5", "maxDeliver", "1"))
	pausable := cl.(pubsub.PausableSubscriber)
	stream, cancel := rawPull(t, c, "pubsub", "longpause", nil)
	defer cancel()
	_, js := natstest.Client(t, r.ns)
	natstest.WaitConsumer(t, js, "longpause", "app-longpause")
	pad := strings.Repeat("x", 512<<10)
	for i := range 5 {
		publishWhenBack(t, cl, "longpause", fmt.Sprintf("p%d:%s", i, pad))
	}
	first, err := stream.Recv() // daprd works on this one and reads no more
	require.NoError(t, err)
	cons, err := js.Consumer(context.Background(), "longpause", "app-longpause")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0
	}, 10*time.Second, 20*time.Millisecond, "the component did not fetch the backlog")

	r.down()
	ctx := context.Background()
	require.NoError(t, pausable.Pause(ctx))
	time.Sleep(33 * time.Second) // the outage itself, with daprd paused
	r.up()
	publishWhenBack(t, cl, "longpause", "after")
	require.NoError(t, pausable.Resume(ctx))
	seen := map[string]bool{string(first.GetData()[:2]): true}
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: first.GetId()}))
	defer time.AfterFunc(20*time.Second, cancel).Stop()
	for len(seen) < 6 {
		m, err := stream.Recv()
		if err != nil {
			break
		}
		seen[string(m.GetData()[:2])] = true
		require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))
	}
	_, js2 := natstest.Client(t, r.ns)
	cons2, err := js2.Consumer(context.Background(), "longpause", "app-longpause")
	require.NoError(t, err)
	info, err := cons2.Info(context.Background())
	require.NoError(t, err)
	assert.Len(t, seen, 6, "the app got only %v of p0-p4 and after; JetStream has %d pending and %d awaiting an ack, so it will not deliver the rest again",
		seen, info.NumPending, info.NumAckPending)
}
