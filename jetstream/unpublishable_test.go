package jetstream

import (
	"context"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// Publishing to a stream that cannot confirm or take it fails at once, not
// retriable, naming the stream, the setting and the fix: a sealed stream
// takes nothing, and one with no_ack never acknowledges, so the publish
// would wait out its deadline and a retry would store the message twice.
func TestPublishToStreamThatCannotTakeIt(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		edit func(*natsjs.StreamConfig)
		want []string
	}{
		{"sealed", func(c *natsjs.StreamConfig) { c.Sealed = true }, []string{`stream "ORDERS" is sealed`, "cannot be unsealed", "nats stream rm ORDERS"}},
		{"no ack", func(c *natsjs.StreamConfig) { c.NoAck = true }, []string{`stream "ORDERS" has no_ack set`, "twice", "nats stream edit ORDERS"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, before := range []bool{false, true} {
				ns, js := startNATS(t)
				ordersStream(t, js)
				ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
				if before {
					// The component knows the stream already.
					publish(t, ps, "orders.a", "first", nil)
				}
				cfg := streamInfo(t, js, "ORDERS").Config
				tc.edit(&cfg)
				_, err := js.UpdateStream(ctx(t), cfg)
				require.NoError(t, err)
				start := time.Now()
				// A publish to a known no_ack stream waits for its deadline.
				pctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
				err = ps.Publish(pctx, &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("x")})
				cancel()
				require.Error(t, err)
				t.Log(err)
				if !before {
					assert.Less(t, time.Since(start), waitShort, "the publish waited")
				}
				assert.Equal(t, KindRejected, KindOf(err))
				for _, s := range tc.want {
					assert.Contains(t, err.Error(), s)
				}
			}
		})
	}
}

// An operator seals the topic's stream, or sets no_ack on it, after an
// atomic BulkPublish set it up. The next atomic bulk fails as a plain
// publish does: not retriable, naming the stream, the setting and the fix,
// within the caller's deadline, and nothing is stored.
func TestAtomicBulkToStreamThatCannotTakeIt(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		edit func(*natsjs.StreamConfig)
		want []string
	}{
		{"sealed", func(c *natsjs.StreamConfig) { c.Sealed = true }, []string{`stream "ORDERS" is sealed`, "nats stream rm ORDERS"}},
		{"no ack", func(c *natsjs.StreamConfig) { c.NoAck = true }, []string{`stream "ORDERS" has no_ack set`, "nats stream edit ORDERS"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ordersStream(t, js)
			ps, _ := open(t, ns.ClientURL(), nil)
			_, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders.a", Entries: textEntries("a", 2), Metadata: atomicBulk})
			require.NoError(t, err)
			cfg := streamInfo(t, js, "ORDERS").Config
			tc.edit(&cfg)
			_, err = js.UpdateStream(ctx(t), cfg)
			require.NoError(t, err)

			deadline := 2 * time.Second
			pctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			start := time.Now()
			resp, err := ps.BulkPublish(pctx, &pubsub.BulkPublishRequest{Topic: "orders.a", Entries: textEntries("b", 2), Metadata: atomicBulk})
			took := time.Since(start)
			require.Error(t, err)
			t.Log(err)
			assert.Less(t, took, deadline+time.Second, "the atomic bulk outlasted its deadline")
			assert.Equal(t, KindRejected, KindOf(err))
			require.Len(t, resp.FailedEntries, 2)
			for _, f := range resp.FailedEntries {
				for _, s := range tc.want {
					assert.ErrorContains(t, f.Error, s, "entry %s", f.EntryId)
				}
			}
			assert.Equal(t, uint64(2), msgCount(t, js, "ORDERS"))
		})
	}
}

// streamName names a mirror, as for an app that reads a region's copy of
// ORDERS: its subscriptions take the topic's messages from the mirror, as a
// consumer made with nats consumer add on it does, instead of asking to add
// the topic to a stream that JetStream lets hold no subjects. A publish
// through it fails at once, not retriable, naming the mirror, its origin
// and the fix, and stores nothing.
func TestStreamNameNamesAMirror(t *testing.T) {
	t.Parallel()
	for _, auto := range []string{"false", "true"} {
		t.Run("autoProvision "+auto, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ordersStream(t, js)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "MIRROR", Mirror: &natsjs.StreamSource{Name: "ORDERS"}})
			require.NoError(t, err)
			ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": auto, "streamName": "MIRROR", "consumerID": "app"})
			h, got := collect()
			subscribe(t, ps, "orders.a", nil, h)
			natstest.WaitConsumer(t, js, "MIRROR", ordersDurable)
			_, err = js.Publish(ctx(t), "orders.a", []byte("from the origin"))
			require.NoError(t, err)
			m := recv(t, got, waitFor)
			assert.Equal(t, "from the origin", string(m.Data))
			assert.Equal(t, "MIRROR", m.Metadata[MetadataStream])

			err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("x")})
			require.Error(t, err)
			t.Log(err)
			assert.Equal(t, KindRejected, KindOf(err))
			for _, s := range []string{`stream "MIRROR" is a mirror of "ORDERS"`, `streamName "ORDERS"`} {
				assert.Contains(t, err.Error(), s)
			}
			assert.Equal(t, uint64(1), count(js, "ORDERS"), "the refused publish was stored")
			assert.Empty(t, streamInfo(t, js, "MIRROR").Config.Subjects)
		})
	}
}

// With autoProvision off, streamName names a stream that takes the topic
// only from the streams it sources, as an operator's aggregate of several
// regions: subscriptions read the topic there, instead of retrying forever
// with a fix JetStream refuses (adding the topic, which its origin holds, to
// it). A publish through it fails at once, naming the sources and the fix.
func TestStreamNameNamesAStreamThatSourcesTheTopic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "AGG", Sources: []*natsjs.StreamSource{{Name: "ORDERS"}}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "streamName": "AGG", "consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders.a", nil, h)
	natstest.WaitConsumer(t, js, "AGG", ordersDurable)
	_, err = js.Publish(ctx(t), "orders.a", []byte("from the origin"))
	require.NoError(t, err)
	m := recv(t, got, waitFor)
	assert.Equal(t, "from the origin", string(m.Data))
	assert.Equal(t, "AGG", m.Metadata[MetadataStream])

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	for _, s := range []string{`stream "AGG" takes topic "orders.a" only from the streams it sources ("ORDERS")`, `streamName "ORDERS"`} {
		assert.Contains(t, err.Error(), s)
	}
	assert.Equal(t, uint64(1), count(js, "ORDERS"), "the refused publish was stored")
}

// The topic's subject is in a counter stream (allow_msg_counter), which
// stores only increments that it adds up per subject. A publish fails at
// once, not retriable, naming the stream, the setting and the fix, instead
// of with JetStream's bare "message counter increment is missing"; so does
// each entry of a bulk.
func TestPublishToACounterStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}, AllowMsgCounter: true})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	want := []string{`stream "ORDERS" is a counter stream (allow_msg_counter)`, "Nats-Incr", "streamName"}
	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	for _, s := range want {
		assert.Contains(t, err.Error(), s)
	}
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders.a", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "1", Event: []byte("x"), ContentType: "text/plain"},
	}})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 1)
	for _, s := range want {
		assert.Contains(t, resp.FailedEntries[0].Error.Error(), s)
	}
	assert.Zero(t, count(js, "ORDERS"))
}

// A publish whose stream look-up JetStream does not answer in time (here no
// server answers the API prefix; in a cluster, leaders being elected) says
// that JetStream did not answer, and stays retriable.
func TestPublishWhenJetStreamDoesNotAnswer(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc, _ := natstest.Client(t, ns)
	_, err := nc.Subscribe("$SLOW.API.>", func(*nats.Msg) {})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	ps, _ := open(t, ns.ClientURL(), map[string]string{"apiPrefix": "$SLOW.API"})
	pctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	err = ps.Publish(pctx, &pubsub.PublishRequest{Topic: "slow", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindUnavailable, KindOf(err))
	assert.Contains(t, err.Error(), "JetStream did not answer in time")
}

// An operator follows the fix that the refusal names: deletes the sealed
// stream so that auto-provisioning creates a new one, or lets the no_ack
// stream acknowledge again (nats stream edit --ack). The next publish must
// then be stored, not refused for what the stream was.
func TestPublishAfterTheOperatorFixedAStreamThatCouldNotTakeIt(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		edit, fix func(t *testing.T, js natsjs.JetStream)
		via       string
	}{
		{"sealed, then deleted", func(t *testing.T, js natsjs.JetStream) {
			cfg := streamInfo(t, js, "ORDERS").Config
			cfg.Sealed = true
			_, err := js.UpdateStream(ctx(t), cfg)
			require.NoError(t, err)
		}, func(t *testing.T, js natsjs.JetStream) {
			require.NoError(t, js.DeleteStream(ctx(t), "ORDERS"))
			// The component creates it again under another name (orders_a-…),
			// so nats-server's removal of the old files does not matter.
		}, "nats stream rm ORDERS, with autoProvision on"},
		{"no_ack, then ack", func(t *testing.T, js natsjs.JetStream) {
			cfg := streamInfo(t, js, "ORDERS").Config
			cfg.NoAck = true
			_, err := js.UpdateStream(ctx(t), cfg)
			require.NoError(t, err)
		}, func(t *testing.T, js natsjs.JetStream) {
			cfg := streamInfo(t, js, "ORDERS").Config
			cfg.NoAck = false
			_, err := js.UpdateStream(ctx(t), cfg)
			require.NoError(t, err)
		}, "nats stream edit ORDERS --ack"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			keepAccountStore(t, js)
			ordersStream(t, js)
			tc.edit(t, js)
			ps, _ := open(t, ns.ClientURL(), nil)
			err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("refused")})
			require.ErrorIs(t, err, ErrStreamTakesNoPublish)

			tc.fix(t, js)
			err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("after the fix")})
			require.NoError(t, err, "after %s", tc.via)
		})
	}
}

// An operator deletes a topic's stream (nats stream rm) while something
// subscribes to the topic with core NATS (nats sub, a monitoring tool, a
// plain NATS app). JetStream then never answers the publish, and the
// subscriber does not either, so nats.go sees no "no responders". With
// autoProvision on, a publish must still find that the stream is gone and
// create it again, as it does without the subscriber; it must not wait for
// its deadline every time, with an error that says only "context deadline
// exceeded", while nothing is stored.
func TestPublishAfterTheStreamWasDeletedWhileACoreSubscriberListens(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	keepAccountStore(t, js)
	nc, _ := natstest.Client(t, ns)
	ps, _ := open(t, ns.ClientURL(), nil)
	publish(t, ps, "watched", "before", nil)
	_, err := nc.Subscribe("watched", func(*nats.Msg) {})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	removeStream(t, ns, js, "watched")
	var errs []error
	for range 2 {
		pctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		errs = append(errs, ps.Publish(pctx, &pubsub.PublishRequest{Topic: "watched", Data: []byte("after")}))
		cancel()
	}
	t.Log(errs)
	assert.NoError(t, errs[1], "the stream was never created again")
	name, err := js.StreamNameBySubject(ctx(t), "watched")
	require.NoError(t, err, "no stream holds the topic")
	assert.NotZero(t, msgCount(t, js, name))
}

// The NATS user may not publish to the topic, or to the JetStream API the
// publish needs to find its stream. NATS tells only nats.go's error handler,
// and the publish would wait out its deadline with "context deadline
// exceeded". It must instead say which subject NATS refused and which
// permission to grant, and not be retriable: waiting longer cannot help.
func TestPublishDeniedPermission(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "secret", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Deny: []string{"secret.>", "$JS.API.STREAM.NAMES"}},
		}}}
	})
	user := map[string]string{"user": "app", "password": "secret"}
	ps, _ := open(t, ns.ClientURL(), user)
	_, err := ps.js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "SECRET", Subjects: []string{"secret.>"}})
	require.NoError(t, err)
	user["streamName"] = "SECRET" // found without $JS.API.STREAM.NAMES
	named, _ := open(t, ns.ClientURL(), user)
	for topic, refused := range map[string]string{"secret.plans": `"secret.plans"`, "hidden": `"$JS.API.STREAM.NAMES"`} {
		ps := ps
		if topic == "secret.plans" {
			ps = named
		}
		pctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		err := ps.Publish(pctx, &pubsub.PublishRequest{Topic: topic, Data: []byte("x")})
		cancel()
		require.Error(t, err, topic)
		t.Log(err)
		assert.Equal(t, KindRejected, KindOf(err), topic)
		assert.Contains(t, err.Error(), "NATS does not allow this connection to publish to "+refused, topic)

		pctx, cancel = context.WithTimeout(t.Context(), 2*time.Second)
		_, err = ps.BulkPublish(pctx, &pubsub.BulkPublishRequest{Topic: topic, Entries: textEntries("b", 2)})
		cancel()
		require.Error(t, err, topic)
		assert.Equal(t, KindRejected, KindOf(err), "bulk to %s: %v", topic, err)
		assert.Contains(t, err.Error(), "NATS does not allow this connection to publish to "+refused, topic)
	}
}

// A mirror or source holds what it copies under the subjects its transforms
// give them: a subscription to the origin's subject would find nothing.
func TestWhatASourceCopies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   natsjs.StreamSource
		topic string
		want  bool
	}{
		{"everything", natsjs.StreamSource{Name: "O"}, "orders.a", true},
		{"within its filter", natsjs.StreamSource{Name: "O", FilterSubject: "orders.>"}, "orders.a", true},
		{"outside its filter", natsjs.StreamSource{Name: "O", FilterSubject: "orders.>"}, "other.a", false},
		{"a transform's source, kept", natsjs.StreamSource{Name: "O", SubjectTransforms: []natsjs.SubjectTransformConfig{{Source: "orders.>"}}}, "orders.a", true},
		{"a transform's destination", natsjs.StreamSource{Name: "O", SubjectTransforms: []natsjs.SubjectTransformConfig{{Source: "orders.>", Destination: "copy.orders.>"}}}, "copy.orders.a", true},
		{"a subject transformed away", natsjs.StreamSource{Name: "O", SubjectTransforms: []natsjs.SubjectTransformConfig{{Source: "orders.>", Destination: "copy.orders.>"}}}, "orders.a", false},
		{"a mapping function, not worked out", natsjs.StreamSource{Name: "O", SubjectTransforms: []natsjs.SubjectTransformConfig{{Source: "orders.*", Destination: "copy.{{wildcard(1)}}"}}}, "copy.a", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, copies(tc.src, tc.topic))
		})
	}
}
