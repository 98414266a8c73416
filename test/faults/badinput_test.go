//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/jetstream"
)

// badPublishOK publishes a small message to a valid topic: the component
// still works after bad input.
func badPublishOK(t *testing.T, ps *jetstream.PubSub, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	defer cancel()
	require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: []byte("still working")}),
		"a valid publish after bad input")
}

func badInvalid(t *testing.T, err error, wants ...string) {
	t.Helper()
	require.Error(t, err)
	assert.Equal(t, jetstream.KindInvalid, jetstream.KindOf(err), "bad input is KindInvalid (InvalidArgument over gRPC): %v", err)
	for _, w := range wants {
		assert.Contains(t, err.Error(), w)
	}
}

func TestBadInputTopics(t *testing.T) {
	ns := natstest.Start(t)
	ps, err := secInit(t, secProps(ns.ClientURL()))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 4*secWait)
	defer cancel()

	cases := []struct {
		name, topic, why string
		subscribable     bool
	}{
		{"space", "with space", "white space", false},
		{"star wildcard", "a.*", "wildcard", true},
		{"tail wildcard", "a.>", "wildcard", true},
		{"empty", "", "is empty", false},
		{"10 kB", strings.Repeat("t", 10<<10), "longer than 2048 bytes", false},
		{"control character", "orders\x01x", "control character", false},
		{"protocol injection", "orders\r\nPUB evil 1\r\nx", "control character", false},
		{"invalid UTF-8", "orders.\xff", "UTF-8", false},
		{"empty token", "orders..x", "empty token", false},
		{"wildcard inside a token", "orders.a*", "inside a token", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: tc.topic, Data: []byte("x")})
			badInvalid(t, err, "topic", tc.why)
			if tc.topic != "" {
				assert.Contains(t, err.Error(), fmt.Sprintf("%q", tc.topic), "the error names the topic")
			}

			resp, err := ps.BulkPublish(ctx, &pubsub.BulkPublishRequest{PubsubName: "pubsub", Topic: tc.topic, Entries: []pubsub.BulkMessageEntry{
				{EntryId: "e1", Event: []byte("1")}, {EntryId: "e2", Event: []byte("2")},
			}})
			badInvalid(t, err, "topic", tc.why)
			require.Len(t, resp.FailedEntries, 2, "every entry is reported failed")
			for _, f := range resp.FailedEntries {
				badInvalid(t, f.Error, tc.why)
			}

			sctx, scancel := context.WithCancel(ctx)
			err = ps.Subscribe(sctx, pubsub.SubscribeRequest{Topic: tc.topic}, func(context.Context, *pubsub.NewMessage) error { return nil })
			if tc.subscribable {
				assert.NoError(t, err, "subscriptions may use wildcards")
			} else {
				badInvalid(t, err, "topic", tc.why)
			}
			scancel()

			badPublishOK(t, ps, "good.topic")
		})
	}
	secRoundTrip(t, ps, "good.after")
}

func TestBadInputMaxPayload(t *testing.T) {
	const maxPayload = 1024
	ns := natstest.Start(t, func(o *server.Options) { o.MaxPayload = maxPayload })
	ps, err := secInit(t, secProps(ns.ClientURL()))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	defer cancel()

	big := make([]byte, 4*maxPayload)
	err = ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "big", Data: big})
	badInvalid(t, err, "max_payload", fmt.Sprint(len(big)), fmt.Sprint(maxPayload))
	badPublishOK(t, ps, "big")

	// Exactly max_payload of data, but the headers make it larger.
	err = ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "big", Data: make([]byte, maxPayload),
		Metadata: map[string]string{"msgId": "edge", "trace": "abc"}})
	badInvalid(t, err, "max_payload", "headers", fmt.Sprint(maxPayload))
	badPublishOK(t, ps, "big")

	resp, err := ps.BulkPublish(ctx, &pubsub.BulkPublishRequest{PubsubName: "pubsub", Topic: "big", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "big", Event: big}, {EntryId: "small", Event: []byte("small")},
	}})
	badInvalid(t, err, "max_payload")
	require.Len(t, resp.FailedEntries, 1)
	assert.Equal(t, "big", resp.FailedEntries[0].EntryId)
	badInvalid(t, resp.FailedEntries[0].Error, "max_payload", fmt.Sprint(len(big)), fmt.Sprint(maxPayload))

	_, js := natstest.Client(t, ns)
	st, err := js.Stream(ctx, "big")
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), info.State.Msgs, "the two small publishes and the small bulk entry are stored")
	secRoundTrip(t, ps, "big.after")
}

// TestBadInputInvalidCloudEvent: a payload that is not valid CloudEvent JSON
// is published as it is, with no Nats-Msg-Id, so it is never de-duplicated.
func TestBadInputInvalidCloudEvent(t *testing.T) {
	ns := natstest.Start(t)
	ps, err := secInit(t, secProps(ns.ClientURL()))
	require.NoError(t, err)
	nc, _ := natstest.Client(t, ns)
	sub, err := nc.SubscribeSync("raw.events")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	defer cancel()

	payloads := []string{
		`{"specversion":"1.0","id":"cut-off",`,
		`{"specversion":"1.0","id":"bad-data","data":}`,
		`{"id":"no-specversion","data":1}`,
		`{"specversion":"1.0","data":"no id"}`,
		`["specversion","1.0","id","array"]`,
		"not json at all",
		"",
	}
	for _, p := range payloads {
		for range 2 { // twice: nothing may de-duplicate them
			require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "raw.events", Data: []byte(p)}), "payload %q", p)
			m, err := sub.NextMsg(secShort)
			require.NoError(t, err)
			assert.Equal(t, p, string(m.Data))
			assert.Empty(t, m.Header.Get(nats.MsgIdHdr), "payload %q must carry no Nats-Msg-Id", p)
		}
	}
	_, js := natstest.Client(t, ns)
	name, err := js.StreamNameBySubject(ctx, "raw.events")
	require.NoError(t, err)
	st, err := js.Stream(ctx, name)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2*len(payloads)), info.State.Msgs, "every copy stored")

	// A valid CloudEvent still gets its id, and a repeat is dropped.
	ce, id := secCloudEvent(t, "raw.events", "valid")
	for range 2 {
		require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "raw.events", Data: ce}))
	}
	m, err := sub.NextMsg(secShort)
	require.NoError(t, err)
	assert.Equal(t, "raw.events:"+id, m.Header.Get(nats.MsgIdHdr), "the id is scoped to the topic")
	info, err = st.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2*len(payloads)+1), info.State.Msgs, "the repeated CloudEvent was de-duplicated")
}

// TestBadInputGRPC drives the pluggable server with the generated client, as
// daprd does, and feeds it calls out of order and bad frames.
func TestBadInputGRPC(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	g := secStartGRPC(t)
	good := secProps(ns.ClientURL(), "consumerID", "app")

	t.Run("calls before Init", func(t *testing.T) {
		ctx := secInstance(t, "nobody")
		for _, call := range []struct {
			name string
			do   func() error
		}{
			{"Features", func() error { _, err := g.client.Features(ctx, &proto.FeaturesRequest{}); return err }},
			{"Publish", func() error {
				_, err := g.client.Publish(ctx, &proto.PublishRequest{Topic: "t", Data: []byte("x")})
				return err
			}},
			{"BulkPublish", func() error {
				_, err := g.client.BulkPublish(ctx, &proto.BulkPublishRequest{Topic: "t", Entries: []*proto.BulkMessageEntry{{EntryId: "1", Event: []byte("x")}}})
				return err
			}},
			{"Pause", func() error { _, err := g.client.Pause(ctx, &proto.PauseRequest{}); return err }},
			{"Resume", func() error { _, err := g.client.Resume(ctx, &proto.ResumeRequest{}); return err }},
			{"Ping", func() error { _, err := g.client.Ping(ctx, &proto.PingRequest{}); return err }},
		} {
			err := call.do()
			assert.Equal(t, codes.FailedPrecondition, status.Code(err), "%s: %v", call.name, err)
		}
		pull, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		// The server may end the stream before this frame is sent (Send
		// then says io.EOF); the status is what Recv returns either way.
		_ = pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "t"}})
		_, err = pull.Recv()
		assert.Equal(t, codes.FailedPrecondition, status.Code(err), "PullMessages: %v", err)
		assert.Contains(t, err.Error(), "Init")
	})

	t.Run("Init with contradictory metadata", func(t *testing.T) {
		ctx := secInstance(t, "contradictory")
		for _, kv := range [][]string{
			{"deliverPolicy", "new", "startSequence", "5"},
			{"startSequence", "5", "startTime", "1700000000"},
			{"domain", "hub", "apiPrefix", "$JS.hub.API"},
			{"maxInFlight", "50", "maxAckPending", "10"},
			{"token", secret("tok-contradiction"), "nkeySeed", badUserSeed(t)},
		} {
			err := secGRPCInit(ctx, g.client, secProps(ns.ClientURL(), kv...))
			assert.Equal(t, codes.InvalidArgument, status.Code(err), "%s and %s: %v", kv[0], kv[2], err)
			assert.Contains(t, err.Error(), `"`+kv[0]+`"`)
			assert.Contains(t, err.Error(), `"`+kv[2]+`"`)
			secNoSecret(t, "the Init error", err.Error())
		}
		// Still not initialised; a valid Init then works.
		_, err := g.client.Publish(ctx, &proto.PublishRequest{Topic: "t", Data: []byte("x")})
		assert.Equal(t, codes.FailedPrecondition, status.Code(err))
		require.NoError(t, secGRPCInit(ctx, g.client, good))
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "t", Data: []byte("x")})
		require.NoError(t, err)
	})

	ctx := secInstance(t, "pubsub")
	require.NoError(t, secGRPCInit(ctx, g.client, good))

	t.Run("bad topics and sizes are InvalidArgument", func(t *testing.T) {
		_, err := g.client.Publish(ctx, &proto.PublishRequest{Topic: "a.*", Data: []byte("x")})
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		resp, err := g.client.BulkPublish(ctx, &proto.BulkPublishRequest{Topic: "with space", Entries: []*proto.BulkMessageEntry{{EntryId: "1", Event: []byte("x")}}})
		if err == nil {
			require.Len(t, resp.GetFailedEntries(), 1)
			assert.Contains(t, resp.GetFailedEntries()[0].GetError(), "white space")
		} else {
			assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		}
		pull, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "with space"}}))
		_, err = pull.Recv()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		// Over the server's max_payload (1 MB by default).
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "ok", Data: make([]byte, 3<<19)})
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.Contains(t, err.Error(), "max_payload")
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "ok", Data: []byte("x")})
		require.NoError(t, err)
	})

	t.Run("first frame without a topic", func(t *testing.T) {
		for _, first := range []*proto.PullMessagesRequest{{}, {AckMessageId: "1"}, {Topic: &proto.Topic{}}} {
			pull, err := g.client.PullMessages(ctx)
			require.NoError(t, err)
			require.NoError(t, pull.Send(first))
			_, err = pull.Recv()
			assert.Equal(t, codes.InvalidArgument, status.Code(err), "first frame %v: %v", first, err)
		}
		// A stream that ends before its first frame harms nothing either.
		pull, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		require.NoError(t, pull.CloseSend())
		_, err = pull.Recv()
		assert.Error(t, err)
	})

	t.Run("duplicate topic frames and unknown acks are ignored", func(t *testing.T) {
		pull, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "dup"}}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "dup"}}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "elsewhere"}}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{AckMessageId: "no-such-id"}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{AckMessageId: "zzz", AckError: &proto.AckMessageError{Message: "x"}}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{}))
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "dup", Data: []byte("once")})
		require.NoError(t, err)
		m, err := pull.Recv()
		require.NoError(t, err)
		assert.Equal(t, "once", string(m.GetData()))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))
		require.NoError(t, pull.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()})) // a second ack: ignored
		badAckedAll(t, js, "dup", "app-dup", 1)
		// One consumer, and nothing for the ignored topic.
		st, err := js.Stream(ctx, "dup")
		require.NoError(t, err)
		n := 0
		for range st.ConsumerNames(ctx).Name() {
			n++
		}
		assert.Equal(t, 1, n, "a repeated topic frame creates no second subscription")
		_, err = js.StreamNameBySubject(ctx, "elsewhere")
		assert.Error(t, err, "a topic frame after the first subscribes nothing")
		require.NoError(t, pull.CloseSend())
	})

	t.Run("ack id from another stream", func(t *testing.T) {
		ctxA, cancelA := context.WithCancel(ctx)
		defer cancelA()
		a, err := g.client.PullMessages(ctxA)
		require.NoError(t, err)
		require.NoError(t, a.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "owna"}}))
		b, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		require.NoError(t, b.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "ownb"}}))

		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "owna", Data: []byte("for A")})
		require.NoError(t, err)
		ma, err := a.Recv()
		require.NoError(t, err)
		// B acks A's message, then handles one of its own.
		require.NoError(t, b.Send(&proto.PullMessagesRequest{AckMessageId: ma.GetId()}))
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "ownb", Data: []byte("for B")})
		require.NoError(t, err)
		mb, err := b.Recv()
		require.NoError(t, err)
		assert.Equal(t, "for B", string(mb.GetData()))
		require.NoError(t, b.Send(&proto.PullMessagesRequest{AckMessageId: mb.GetId()}))
		// B's frames are handled in order: once its own ack landed, the
		// foreign one was already seen, and A's message is still pending.
		badAckedAll(t, js, "ownb", "app-ownb", 1)
		info := badConsumer(t, js, "owna", "app-owna")
		assert.Equal(t, 1, info.NumAckPending, "B's ack of A's message id must not settle it")

		// A goes away without acking: its message is handed over to the next
		// stream at once, without counting as another delivery.
		cancelA()
		c, err := g.client.PullMessages(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "owna"}}))
		again, err := c.Recv()
		require.NoError(t, err)
		assert.Equal(t, "for A", string(again.GetData()))
		assert.Equal(t, "1", again.GetMetadata()[jetstream.MetadataDeliveries])
		require.NoError(t, c.Send(&proto.PullMessagesRequest{AckMessageId: again.GetId()}))
		badAckedAll(t, js, "owna", "app-owna", 1)

		// B keeps working.
		_, err = g.client.Publish(ctx, &proto.PublishRequest{Topic: "ownb", Data: []byte("B again")})
		require.NoError(t, err)
		mb, err = b.Recv()
		require.NoError(t, err)
		assert.Equal(t, "B again", string(mb.GetData()))
		require.NoError(t, b.Send(&proto.PullMessagesRequest{AckMessageId: mb.GetId()}))
		badAckedAll(t, js, "ownb", "app-ownb", 2)
		require.NoError(t, b.CloseSend())
		require.NoError(t, c.CloseSend())
	})

	t.Run("metadata fields", func(t *testing.T) {
		ctx := secInstance(t, "fields")
		missing := "/nonexistent/faults/file.pem"
		// field, then values: each must be refused, naming the field (and
		// for pairs, the other field too).
		rows := []struct {
			field  string
			other  string // the field named with it, for pairs
			values []string
		}{
			{"natsURL", "", []string{"4222", "http://localhost:4222", " , "}},
			{"user", "password", []string{"app"}},
			{"password", "user", []string{secret("only-a-password")}},
			{"jwt", "seedKey", []string{secret("eyJ.only.jwt")}},
			{"seedKey", "", []string{secret("SAnotausersseed")}},
			{"nkeySeed", "", []string{secret("not-a-seed"), secret("SUAAAAAAAAAAAAAAAAAA")}},
			{"credsFile", "", []string{missing}},
			{"tls_client_cert", "tls_client_key", []string{missing}},
			{"tls_ca_file", "", []string{missing}},
			{"reconnectWait", "", []string{"soon", "-1s"}},
			{"connectTimeout", "", []string{"soon", "-1s"}},
			{"streamName", "", []string{"a.b", "with space"}},
			{"autoProvision", "", []string{"yes"}},
			{"streamSubjects", "", []string{"a b"}},
			{"streamStorage", "", []string{"disk"}},
			{"streamReplicas", "", []string{"three", "6", "0"}},
			{"streamMaxAge", "", []string{"forever", "-1h"}},
			{"streamMaxMsgs", "", []string{"many", "0", "-2"}},
			{"streamMaxBytes", "", []string{"1GB", "0", "-2"}},
			{"streamDuplicateWindow", "", []string{"x", "-1m"}},
			{"deliverPolicy", "", []string{"first", "sequence"}},
			{"deliverAll", "", []string{"sure"}},
			{"startSequence", "", []string{"-1", "0"}},
			{"startTime", "", []string{"yesterday", "0"}},
			{"ackPolicy", "", []string{"some"}},
			{"ackWait", "", []string{"long", "0s"}},
			{"maxDeliver", "", []string{"x", "-2"}},
			{"backOff", "", []string{"1s,x", "1s,-1s"}},
			{"nakDelay", "", []string{"x", "-1s"}},
			{"maxAckPending", "", []string{"x", "0"}},
			{"maxInFlight", "", []string{"x", "0"}},
			{"replicas", "", []string{"x", "6"}},
			{"memoryStorage", "", []string{"maybe"}},
			{"rateLimit", "", []string{"fast", "-1"}},
			{"heartbeat", "", []string{"x", "100ms", "31s"}},
			{"flowControl", "", []string{"x"}},
			{"concurrency", "", []string{"many"}},
		}
		for _, r := range rows {
			for _, v := range r.values {
				props := secProps(ns.ClientURL(), r.field, v)
				if r.field == "natsURL" {
					props["natsURL"] = v
				}
				err := secGRPCInit(ctx, g.client, props)
				if !assert.Equal(t, codes.InvalidArgument, status.Code(err), "%s=%q: %v", r.field, v, err) {
					continue
				}
				assert.Contains(t, err.Error(), `"`+r.field+`"`, "%s=%q", r.field, v)
				if r.other != "" {
					assert.Contains(t, err.Error(), `"`+r.other+`"`, "%s=%q", r.field, v)
				}
				secNoSecret(t, "the Init error for "+r.field, err.Error())
			}
		}
		// After all that, the instance still initialises and works.
		require.NoError(t, secGRPCInit(ctx, g.client, good))
		_, err := g.client.Publish(ctx, &proto.PublishRequest{Topic: "fields", Data: []byte("x")})
		require.NoError(t, err)
	})
}

// badConsumer returns the info of a durable, waiting for it to exist.
func badConsumer(t *testing.T, js natsjs.JetStream, stream, durable string) *natsjs.ConsumerInfo {
	t.Helper()
	var info *natsjs.ConsumerInfo
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ctx, cancel := context.WithTimeout(context.Background(), secShort)
		defer cancel()
		cons, err := js.Consumer(ctx, stream, durable)
		if !assert.NoError(c, err) {
			return
		}
		info, err = cons.Info(ctx)
		assert.NoError(c, err)
	}, secWait, secTick)
	return info
}

// badAckedAll waits until the durable has delivered n times and has nothing
// pending.
func badAckedAll(t *testing.T, js natsjs.JetStream, stream, durable string, delivered uint64) {
	t.Helper()
	natstest.AwaitT(t, secWait, "consumer "+durable+" on "+stream, func() error {
		info := badConsumer(t, js, stream, durable)
		if info.NumAckPending == 0 && info.Delivered.Consumer == delivered {
			return nil
		}
		return fmt.Errorf("%d pending, %d delivered; want 0 pending, %d delivered", info.NumAckPending, info.Delivered.Consumer, delivered)
	})
}

// badUserSeed is a fresh NKey user seed, registered as a secret.
func badUserSeed(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	return secret(string(seed))
}
