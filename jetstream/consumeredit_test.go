package jetstream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// The durable of consumerID app for topic orders.a.
const ordersDurable = "app-orders_a-cea5d320"

// ordersStream creates stream ORDERS on orders.>, as an operator would.
func ordersStream(t *testing.T, js natsjs.JetStream) {
	t.Helper()
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	require.NoError(t, err)
}

// editConsumer changes a consumer as nats consumer edit does.
func editConsumer(t *testing.T, js natsjs.JetStream, stream, name string, edit func(*natsjs.ConsumerConfig)) {
	t.Helper()
	natstest.WaitConsumer(t, js, stream, name)
	c, err := js.Consumer(ctx(t), stream, name)
	require.NoError(t, err)
	cfg := c.CachedInfo().Config
	edit(&cfg)
	_, err = js.UpdateConsumer(ctx(t), stream, cfg)
	require.NoError(t, err)
}

// An operator may limit the pull requests a consumer takes (nats consumer
// add or edit with --max-pull-batch, --max-pull-expire): the subscription
// follows the limits instead of being refused for good.
func TestPullFollowsConsumerRequestLimits(t *testing.T) {
	t.Parallel()
	for name, limit := range map[string]func(*natsjs.ConsumerConfig){
		"max batch":   func(c *natsjs.ConsumerConfig) { c.MaxRequestBatch = 5 },
		"max expires": func(c *natsjs.ConsumerConfig) { c.MaxRequestExpires = 500 * time.Millisecond },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ordersStream(t, js)
			cfg := natsjs.ConsumerConfig{Durable: ordersDurable, FilterSubject: "orders.a", AckPolicy: natsjs.AckExplicitPolicy}
			limit(&cfg)
			_, err := js.CreateConsumer(ctx(t), "ORDERS", cfg)
			require.NoError(t, err)
			ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "heartbeat": "1s"})
			h, got := collect()
			subscribe(t, ps, "orders.a", nil, h)
			for i := range 20 {
				publish(t, ps, "orders.a", fmt.Sprint(i), nil)
			}
			for range 20 {
				recv(t, got, waitFor)
			}
		})
	}
}

// An operator who changes the filter of the durable a subscription uses
// (nats consumer edit --filter) neither gets messages of other subjects to
// the topic's app nor loses the topic's messages that the changed consumer
// skips: the subscription sets the consumer up again, from the last message
// it handled.
func TestConsumerFilterChangedByOperator(t *testing.T) {
	t.Parallel()
	t.Run("widened", func(t *testing.T) {
		t.Parallel()
		ns, js := startNATS(t)
		ordersStream(t, js)
		ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
		h, got := collect()
		subscribe(t, ps, "orders.a", nil, h)
		editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.FilterSubject = "orders.*" })
		publish(t, ps, "orders.b", "for-b", nil)
		publish(t, ps, "orders.a", "for-a", nil)
		m := recv(t, got, waitFor)
		require.Equal(t, "for-a", string(m.Data), "delivered to topic %q: a message of %q", m.Topic, m.Metadata["Topic"])
		// for-a may come again (it was in flight when the consumer was made
		// again); for-b never.
		for deadline := time.After(waitShort); ; {
			select {
			case m := <-got:
				require.Equal(t, "for-a", string(m.Data))
				continue
			case <-deadline:
			}
			break
		}
		require.Eventually(t, func() bool {
			info, err := consumerInfo(js, "ORDERS", ordersDurable)
			return err == nil && info.Config.FilterSubject == "orders.a"
		}, waitFor, tick, "the filter is not set back")
	})
	t.Run("changed", func(t *testing.T) {
		t.Parallel()
		ns, js := startNATS(t)
		ordersStream(t, js)
		ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
		h, got := collect()
		subscribe(t, ps, "orders.a", nil, h)
		publish(t, ps, "orders.a", "before", nil)
		require.Equal(t, "before", string(recv(t, got, waitFor).Data))
		settledConsumer(t, js, "ORDERS", ordersDurable)
		editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.FilterSubject = "orders.b" })
		publish(t, ps, "orders.a", "meanwhile", nil)
		// Found at the next idle refresh of the consumer's settings.
		require.Equal(t, "meanwhile", string(recv(t, got, refreshIdle+waitFor).Data))
		nothing(t, got, waitShort)
	})
}

// A message that JetStream stops delivering because maxDeliver ran out,
// without a last failure this subscription knew as the last (an operator
// lowered max_deliver), still goes to the dead-letter subject, or, without
// one, to the log.
func TestMaxDeliverLoweredByOperator(t *testing.T) {
	t.Parallel()
	for _, dead := range []bool{true, false} {
		t.Run(fmt.Sprintf("deadLetterSubject=%v", dead), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			ordersStream(t, js)
			props := map[string]string{"autoProvision": "false", "consumerID": "app", "maxDeliver": "10"}
			if dead {
				_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
				require.NoError(t, err)
				props["deadLetterSubject"] = "dead.{topic}"
			}
			ps, log := open(t, ns.ClientURL(), props)
			fails, _ := failing(100)
			subscribe(t, ps, "orders.a", nil, fails)
			// The edit comes after the subscription set the consumer up, which
			// applies the metadata's maxDeliver, as an operator's would.
			require.Eventually(t, func() bool { return strings.Contains(log.String(), "subscribed to topic") }, waitFor, tick, "log: %s", log)
			editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.MaxDeliver = 2 })
			publish(t, ps, "orders.a", "poison", nil)
			if !dead {
				require.Eventually(t, func() bool { return strings.Contains(log.String(), "stopped delivering the message at sequence 1") }, waitFor, tick, "log: %s", log)
				return
			}
			require.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick, "not dead-lettered")
			st, err := js.Stream(ctx(t), "DEAD")
			require.NoError(t, err)
			m, err := st.GetMsg(ctx(t), 1)
			require.NoError(t, err)
			require.Equal(t, "poison", string(m.Data))
			require.Equal(t, "1", m.Header.Get(HeaderDeadLetterSequence))
			require.Equal(t, "2", m.Header.Get(HeaderDeadLetterDeliveries))
			require.Equal(t, "orders.a", m.Header.Get(HeaderDeadLetterSubject))
			require.Contains(t, m.Header.Get(HeaderDeadLetterError), "maxDeliver")
		})
	}
}

// After an operator lowered max_deliver, JetStream gives up on two
// messages; the dead-letter stream refuses the first for good (larger than
// its max_msg_size). The second, which it takes, must still be
// dead-lettered: JetStream has dropped it, and nothing else records it. And
// the refused one must fail Ping and so the readiness probe, naming the
// dead-letter subject, as a refused dead letter of a last failure seen here
// does (TestDeadLetterRefusedForGoodFailsPing).
func TestAbandonedDeadLetterRefusedForGood(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}, MaxMsgSize: 1024})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "maxDeliver": "10", "deadLetterSubject": "dead.{topic}"})
	fails, _ := failing(100)
	subscribe(t, ps, "orders.a", nil, fails)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "subscribed to topic") }, waitFor, tick, "log: %s", log)
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.MaxDeliver = 2 })
	publish(t, ps, "orders.a", strings.Repeat("x", 2000), nil)
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), `sequence 1 of stream \"ORDERS\", which JetStream stopped delivering`)
	}, waitFor, tick, "log: %s", log)
	publish(t, ps, "orders.a", "small", nil)
	assert.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick,
		"the message at sequence 2, which the dead-letter stream takes, waits behind the refused one for ever")
	assert.Eventually(t, func() bool { return ps.Ping(ctx(t)) != nil }, stuckAfter+waitShort, tick,
		"Ping passes while a dead letter of a message JetStream gave up on is refused for good")
}

// A connection that may not subscribe to JetStream's advisories still
// delivers, and says once what it cannot do without them.
func TestAbandonedWithoutAdvisoryPermission(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "secret", Permissions: &server.Permissions{
			Subscribe: &server.SubjectPermission{Deny: []string{"$JS.EVENT.>"}},
		}}}
	})
	ps, log := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app"})
	for _, topic := range []string{"one", "two"} {
		h, got := collect()
		subscribe(t, ps, topic, nil, h)
		publish(t, ps, topic, "x", nil)
		recv(t, got, waitFor)
	}
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), "does not allow this connection to subscribe to $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>")
	}, waitFor, tick, "log: %s", log)
	require.Equal(t, 1, strings.Count(log.String(), "MAX_DELIVERIES"), "log: %s", log)
	require.NotContains(t, log.String(), "level=warn")
}

// An operator takes $JS.API.CONSUMER.INFO away from the NATS user while a
// subscription runs (a reloaded server authorization, or a new user JWT).
// Delivery goes on, but every read of the consumer, once a second while
// messages are held, now waits verifyTimeout for an answer that never comes,
// and its failure is dropped: the log has only nats.go's "permissions
// violation", naming no topic, and the consumer's counts
// (consumer_ack_pending_messages) stay what they were before, 0 here while
// 4 messages are ack-pending. The subscription must name the refused
// subject for its topic, and not report counts it can no longer read.
func TestConsumerInfoDeniedWhileSubscribed(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "secret"}}
		opts = o
	})
	ps, log := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app"})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before Close
	held := make(chan struct{}, 4)
	subscribe(t, ps, "orders", map[string]string{"concurrency": "parallel"}, func(ctx context.Context, _ *pubsub.NewMessage) error {
		held <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	denied := opts.Clone()
	denied.Users = []*server.User{{Username: "app", Password: "secret", Permissions: &server.Permissions{
		Publish: &server.SubjectPermission{Deny: []string{"$JS.API.CONSUMER.INFO.>"}},
	}}}
	for i := range 4 {
		if i == 1 { // once the subscription delivers
			require.NoError(t, ns.ReloadOptions(denied))
		}
		publish(t, ps, "orders", "x", nil)
		recv(t, held, waitFor)
	}
	assert.Eventually(t, func() bool {
		return strings.Contains(log.String(), `topic \"orders\"`) &&
			strings.Contains(log.String(), `does not allow this connection to publish to \"$JS.API.CONSUMER.INFO.orders.app-orders\"`)
	}, waitFor, tick, "the refused consumer info is not named for its topic")
	for _, st := range ps.Stats().Subscriptions {
		assert.False(t, st.ConsumerKnown && st.NumAckPending != 4,
			"topic %q: the consumer's counts read %d ack-pending while 4 are, as if still read back", st.Topic, st.NumAckPending)
	}
}

// Permissions an operator narrows while a subscription runs, so that its
// pull requests no longer reach JetStream, or what JetStream sends no longer
// reaches its inbox: Ping names the subscription and the refused subject
// instead of the subscription stalling silently, and once the permission is
// back, what was published meanwhile is delivered.
func TestPullDeniedWhileSubscribed(t *testing.T) {
	t.Parallel()
	for name, perms := range map[string]*server.Permissions{
		`publish to "$JS.API.CONSUMER.MSG.NEXT.orders.app-orders"`: {Publish: &server.SubjectPermission{Deny: []string{"$JS.API.CONSUMER.MSG.NEXT.>"}}},
		`subscribe to "_INBOX.`: {Subscribe: &server.SubjectPermission{Deny: []string{"_INBOX.>"}}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			users := func(p *server.Permissions) []*server.User {
				return []*server.User{{Username: "app", Password: "secret", Permissions: p}, {Username: "admin", Password: "admin"}}
			}
			var opts *server.Options
			ns := natstest.Start(t, func(o *server.Options) { o.Users, opts = users(nil), o })
			ps, _ := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app"})
			h, got := collect()
			subscribe(t, ps, "orders", nil, h)
			admin, err := nats.Connect(ns.ClientURL(), nats.UserInfo("admin", "admin"))
			require.NoError(t, err)
			t.Cleanup(admin.Close)
			js, err := natsjs.New(admin)
			require.NoError(t, err)
			natstest.WaitConsumer(t, js, "orders", "app-orders")
			send := func(data string) {
				t.Helper()
				_, err := js.Publish(ctx(t), "orders", []byte(data))
				require.NoError(t, err)
			}
			send("before")
			assert.Equal(t, "before", string(recv(t, got, waitFor).Data))
			require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("own")}))
			assert.Equal(t, "own", string(recv(t, got, waitFor).Data))

			denied := opts.Clone()
			denied.Users = users(perms)
			require.NoError(t, ns.ReloadOptions(denied))
			send("meanwhile")
			var pingErr error
			assert.Eventually(t, func() bool {
				pingErr = ps.Ping(ctx(t))
				return pingErr != nil && strings.Contains(pingErr.Error(), `topic "orders"`)
			}, waitFor, tick, "Ping does not name the subscription that cannot pull")
			if pingErr != nil {
				t.Log(pingErr)
				assert.Contains(t, pingErr.Error(), `topic "orders"`)
				assert.Contains(t, pingErr.Error(), name)
			}

			if strings.HasPrefix(name, "subscribe") {
				// nats.go's own inbox for JetStream's answers went too: a
				// publish cannot be confirmed, and says why.
				c, cancel := context.WithTimeout(t.Context(), time.Second)
				err := ps.Publish(c, &pubsub.PublishRequest{Topic: "orders", Data: []byte("unconfirmed")})
				cancel()
				require.Error(t, err)
				assert.Contains(t, err.Error(), "JetStream's answers to its publishes and requests arrive")
				assert.Contains(t, err.Error(), "subscribe permission for _INBOX.>")
				assert.Equal(t, KindRejected, KindOf(err))
			}

			allowed := opts.Clone()
			allowed.Users = users(nil)
			require.NoError(t, ns.ReloadOptions(allowed))
			assert.Equal(t, "meanwhile", string(recv(t, got, waitFor).Data))
			assert.Eventually(t, func() bool { return ps.Ping(ctx(t)) == nil }, waitFor, tick, "Ping fails after the permission is back")
			// Publishing works again too: nats.go's own inboxes for
			// JetStream's answers, which NATS removed with the permission,
			// are subscribed again.
			require.Eventually(t, func() bool {
				return ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("after")}) == nil
			}, waitFor, tick, "publishing does not work again once the permission is back")
			for m := recv(t, got, waitFor); string(m.Data) != "after"; m = recv(t, got, waitFor) {
				assert.Equal(t, "unconfirmed", string(m.Data), "the publish that may be stored or not")
			}
		})
	}
}

// JetStream in another account, reached through an imported API (apiPrefix),
// as nats-server's cross-account JetStream setup has it. JetStream's
// MAX_DELIVERIES advisory is published in that account, where this
// connection does not see it: a message JetStream gives up on (here after an
// operator lowered max_deliver below the deliveries it had) is neither
// dead-lettered nor logged, and nothing says that such messages go
// unnoticed, as it does when permissions deny the advisory subject.
func TestAbandonedThroughAnImportedAPI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	require.NoError(t, os.WriteFile(conf, fmt.Appendf(nil, `
listen: "127.0.0.1:-1"
jetstream: {store_dir: %q}
accounts: {
  JS: {
    jetstream: enabled
    users: [{user: js, password: js}]
    exports: [{service: "$JS.API.>", response_type: stream}, {service: "$JS.ACK.>"}]
  }
  APP: {
    users: [{user: app, password: app}]
    imports: [
      {service: {account: JS, subject: "$JS.API.>"}, to: "JS.hub.API.>"}
      {service: {account: JS, subject: "$JS.ACK.>"}}
    ]
  }
}
`, filepath.Join(dir, "store")), 0o600))
	o, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	o.NoLog, o.NoSigs = true, true
	ns := natstest.Run(t, o)
	t.Cleanup(func() { natstest.Stop(ns) })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("js", "js"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	ordersStream(t, js)

	ps, log := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "app", "apiPrefix": "JS.hub.API",
		"autoProvision": "false", "consumerID": "app", "maxDeliver": "10", "nakDelay": "1s"})
	fails, got := failing(100)
	subscribe(t, ps, "orders.a", nil, fails)
	natstest.WaitConsumer(t, js, "ORDERS", ordersDurable)
	_, err = js.Publish(ctx(t), "orders.a", []byte("poison"))
	require.NoError(t, err)
	recv(t, got, waitFor)
	recv(t, got, waitFor)
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.MaxDeliver = 2 })
	nothing(t, got, 2*time.Second) // JetStream gave up on it instead of the third delivery
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), "message at sequence 1 of stream") || strings.Contains(log.String(), "MAX_DELIVERIES")
	}, waitFor, tick, "the message JetStream gave up on is neither logged nor said to go unnoticed")
}

// A status that ends a pull request without a description is still worded.
func TestPullRefusalWording(t *testing.T) {
	for _, tc := range []struct{ status, desc, want string }{
		{"409", "Exceeded MaxRequestBatch of 5", "409 Exceeded MaxRequestBatch of 5"},
		{"503", "", "503 no responders: nothing serves the consumer: it or its stream is gone, JetStream is not available, or, in a cluster, the consumer has no leader yet (one is elected after the consumer is created, a server restarts or a leader steps down)"},
		{"400", "", "status 400"},
	} {
		require.Equal(t, tc.want, pullRefusal(tc.status, tc.desc))
	}
}

// A rolling update that changes a setting this component manages (here
// ackWait) updates the durable without undoing what an operator set on it
// that the component does not manage: a pause (nats consumer pause), ack
// sampling, metadata, pull request limits and replicas.
func TestRollingUpdateKeepsOperatorConsumerSettings(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	first, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "ackWait": "30s"})
	h, _ := collect()
	sctx, cancel := context.WithCancel(t.Context())
	require.NoError(t, first.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "orders.a"}, h))
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) {
		c.SampleFrequency = "100%"
		c.Metadata = map[string]string{"owner": "payments"}
		c.MaxRequestBatch = 50
		c.MaxRequestExpires = 10 * time.Second
	})
	_, err := js.PauseConsumer(ctx(t), "ORDERS", ordersDurable, until)
	require.NoError(t, err)
	cancel()

	second, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "ackWait": "20s"})
	subscribe(t, second, "orders.a", nil, h)
	var info *natsjs.ConsumerInfo
	require.Eventually(t, func() bool {
		info, err = consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && info.Config.AckWait == 20*time.Second
	}, waitFor, tick, "ackWait was not updated")
	require.True(t, info.Paused, "the operator's pause was undone")
	assert.NotNil(t, info.Config.PauseUntil)
	assert.True(t, until.Equal(*info.Config.PauseUntil), "paused until %v, not %v", *info.Config.PauseUntil, until)
	assert.Equal(t, "100%", info.Config.SampleFrequency)
	assert.Equal(t, "payments", info.Config.Metadata["owner"])
	assert.Equal(t, 50, info.Config.MaxRequestBatch)
	assert.Equal(t, 10*time.Second, info.Config.MaxRequestExpires)
}

// A hot reload turns memoryStorage on. JetStream cannot change the storage
// of an existing durable ("storage type can not be updated"), so the
// durable keeps its file storage: the log must say so, naming the setting
// and the fix, as it does for the settings JetStream refuses to update,
// rather than leave the operator believing the change took effect.
func TestMemoryStorageChangeOfAnExistingDurableIsReported(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	first, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	h, _ := collect()
	sctx, cancel := context.WithCancel(t.Context())
	require.NoError(t, first.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "orders.a"}, h))
	natstest.WaitConsumer(t, js, "ORDERS", ordersDurable)
	cancel()

	second, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "memoryStorage": "true"})
	subscribe(t, second, "orders.a", nil, h)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "subscribed to topic") }, waitFor, tick, "log: %s", log)
	info, err := consumerInfo(js, "ORDERS", ordersDurable)
	require.NoError(t, err)
	require.False(t, info.Config.MemoryStorage, "JetStream changed the storage after all")
	assert.Contains(t, log.String(), "memoryStorage", "the durable keeps file storage, and nothing says so")
	assert.Contains(t, log.String(), "nats consumer rm ORDERS "+ordersDurable)
}

// A consumer an operator paused (nats consumer pause) delivers nothing until
// the pause ends, without counting as a problem; the log says why nothing
// arrives and how to end the pause, and delivery goes on as soon as it ends.
func TestConsumerPausedByOperator(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	_, err := js.CreateConsumer(ctx(t), "ORDERS", natsjs.ConsumerConfig{Durable: ordersDurable, FilterSubject: "orders.a", AckPolicy: natsjs.AckExplicitPolicy})
	require.NoError(t, err)
	_, err = js.PauseConsumer(ctx(t), "ORDERS", ordersDurable, time.Now().Add(time.Hour))
	require.NoError(t, err)

	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders.a", nil, h)
	publish(t, ps, "orders.a", "m1", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "is paused until") }, waitFor, tick, "log: %s", log)
	assert.Contains(t, log.String(), "nats consumer resume ORDERS "+ordersDurable)
	nothing(t, got, time.Second)
	require.NoError(t, ps.Ping(ctx(t)), "a pause is not a problem")

	_, err = js.ResumeConsumer(ctx(t), "ORDERS", ordersDurable)
	require.NoError(t, err)
	resumed := time.Now()
	assert.Equal(t, "m1", string(recv(t, got, waitFor).Data))
	assert.Less(t, time.Since(resumed), 2*time.Second, "delivery went on late")
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "no longer paused") }, waitFor, tick, "log: %s", log)
	assert.NotContains(t, log.String(), "level=warn")
	assert.NotContains(t, log.String(), "level=error")
}

// An operator lowers a durable's ack_wait (nats consumer edit) below the
// time the app has already spent on a message. JetStream applies the new
// value to pending messages at once and sends the message again, to the
// subscription that holds it: that copy is taken as a keep-alive of the one
// the app has, not handed to the app a second time.
func TestAckWaitLoweredWhileTheAppHoldsAMessage(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "ackWait": "30s", "concurrency": "parallel"})
	release := make(chan struct{})
	got := make(chan string, 10)
	subscribe(t, ps, "orders.a", nil, func(ctx context.Context, m *pubsub.NewMessage) error {
		got <- string(m.Data) + " delivery " + m.Metadata[MetadataDeliveries]
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	publish(t, ps, "orders.a", "slow", nil)
	require.Equal(t, "slow delivery 1", recv(t, got, waitFor))
	nothing(t, got, 2500*time.Millisecond) // held longer than the new ack wait
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.AckWait = 2 * time.Second })
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && info.NumRedelivered > 0
	}, waitFor, tick, "JetStream did not send the held message again")
	nothing(t, got, time.Second)
	close(release)
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	}, waitFor, tick, "the message was not acknowledged")
	nothing(t, got, time.Second)
}

// An operator turns on headers_only for a durable in use (nats consumer
// edit, which JetStream allows). The app must still get each message's
// data, or the subscription must say it cannot: a message handed on without
// its data and acknowledged is lost to the app.
func TestHeadersOnlySetByOperator(t *testing.T) {
	t.Parallel()
	js, ps, _, got := runningOrders(t)
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.HeadersOnly = true })
	publish(t, ps, "orders.a", "after", nil)
	m := recv(t, got, waitFor)
	require.Equal(t, "after", string(m.Data), "delivered without its data, and acknowledged")
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && !info.Config.HeadersOnly
	}, waitFor, tick, "headers_only was not turned off")
}

// An operator made the durable with a small max_waiting and max_batch (nats
// consumer add --max-waiting 1 --max-pull-batch 5). The subscription splits
// its window of maxInFlight (100) into 20 requests of 5 at once, and
// JetStream refuses all but one with 409 Exceeded MaxWaiting; each refusal
// backs the pull off. Delivery must go on at the pace of one request at a
// time, not five messages every two seconds with a warning each time.
func TestPullFollowsConsumerMaxWaiting(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	_, err := js.CreateConsumer(ctx(t), "ORDERS", natsjs.ConsumerConfig{
		Durable: ordersDurable, FilterSubject: "orders.a", AckPolicy: natsjs.AckExplicitPolicy, MaxWaiting: 1, MaxRequestBatch: 5,
	})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders.a", nil, h)
	natstest.WaitConsumer(t, js, "ORDERS", ordersDurable)
	const n = 50
	for i := range n {
		_, err := js.PublishAsync("orders.a", []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(waitFor):
		t.Fatal("publishes not acknowledged")
	}
	start := time.Now()
	for range n {
		recv(t, got, waitFor)
	}
	took := time.Since(start)
	assert.Less(t, took, 3*time.Second, "%d messages took %s", n, took)
	refused := strings.Count(log.String(), "Exceeded MaxWaiting")
	assert.Zero(t, refused, "the log has %d refusals of pull requests with 409 Exceeded MaxWaiting", refused)
}

// On a stream with interest retention, an operator widens the filter of the
// durable in use (nats consumer edit --filter orders.*) while the app works
// through a backlog of the topic. The subscription sets the consumer up
// again; the topic's messages that were waiting, which the widened consumer
// still wanted, must still reach the app.
func TestFilterWidenedOnInterestStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}, Retention: natsjs.InterestPolicy})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "maxInFlight": "1"})
	got := make(chan string, 100)
	subscribe(t, ps, "orders.a", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		time.Sleep(200 * time.Millisecond) // a slow app keeps a backlog
		got <- string(m.Data)
		return nil
	})
	natstest.WaitConsumer(t, js, "ORDERS", ordersDurable)
	const n = 10
	for i := range n {
		publish(t, ps, "orders.a", fmt.Sprint(i), nil)
	}
	require.Equal(t, "0", recv(t, got, waitFor))
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.FilterSubject = "orders.*" })
	publish(t, ps, "orders.b", "for-b", nil)
	seen := map[string]bool{"0": true}
	for len(seen) < n {
		select {
		case d := <-got:
			require.NotEqual(t, "for-b", d)
			seen[d] = true
			continue
		case <-time.After(waitFor):
		}
		t.Fatalf("%d of %d messages of the topic reached the app (%v); the stream holds %d messages", len(seen), n, seen, count(js, "ORDERS"))
	}
}

// An operator replaces the durable in use with a push consumer of the same
// name (nats consumer rm, then nats consumer add with a --target). The
// subscription cannot pull from it: it logs an error that names the cause
// and the fix (delete the consumer so that it is made again, or set another
// consumerID), and Ping fails with it.
func TestDurableReplacedByPushConsumer(t *testing.T) {
	t.Parallel()
	js, _, log, _ := runningOrders(t)
	// The subscription may make its durable again between the two commands:
	// the operator then runs them again.
	require.Eventually(t, func() bool {
		if err := js.DeleteConsumer(ctx(t), "ORDERS", ordersDurable); err != nil {
			return false
		}
		_, err := js.CreateConsumer(ctx(t), "ORDERS", natsjs.ConsumerConfig{
			Durable: ordersDurable, FilterSubject: "orders.a", AckPolicy: natsjs.AckExplicitPolicy, DeliverSubject: "push.target",
		})
		return err == nil
	}, waitFor, tick, "the push consumer was not made")
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "level=error") }, waitFor+stuckAfter, tick, "no error logged")
	errs := log.String()[strings.Index(log.String(), "level=error"):]
	assert.Contains(t, errs, "not a pull consumer")
	assert.Contains(t, errs, "nats consumer rm ORDERS "+ordersDurable, "the error does not name the fix")
}

// The ack wait is lowered under a message the app holds, so that JetStream
// sends it again to the same subscription, which keeps the copy the app
// has. That copy then counts as the later delivery: when the app fails it
// on what is now the last delivery maxDeliver allows, it goes to the
// dead-letter subject with the app's own error, at once.
func TestHeldMessageCountsTheRedeliveryItAbsorbed(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "ackWait": "30s",
		"maxDeliver": "2", "deadLetterSubject": "dead.{topic}"})
	release := make(chan struct{})
	got := make(chan string, 10)
	subscribe(t, ps, "orders.a", nil, func(ctx context.Context, m *pubsub.NewMessage) error {
		got <- string(m.Data)
		<-release
		return errors.New("the app turned it down")
	})
	publish(t, ps, "orders.a", "slow", nil)
	require.Equal(t, "slow", recv(t, got, waitFor))
	editConsumer(t, js, "ORDERS", ordersDurable, func(c *natsjs.ConsumerConfig) { c.AckWait = time.Second })
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "ORDERS", ordersDurable)
		return err == nil && info.NumRedelivered > 0
	}, waitFor, tick, "JetStream did not send the held message again")
	close(release)
	require.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick, "not dead-lettered")
	st, err := js.Stream(ctx(t), "DEAD")
	require.NoError(t, err)
	m, err := st.GetMsg(ctx(t), 1)
	require.NoError(t, err)
	assert.Equal(t, "2", m.Header.Get(HeaderDeadLetterDeliveries))
	assert.Contains(t, m.Header.Get(HeaderDeadLetterError), "the app turned it down")
}

// runningOrders starts a subscription of app to orders.a, on the ORDERS
// stream an operator made, and sees it deliver a first message.
func runningOrders(t *testing.T) (natsjs.JetStream, *PubSub, *logBuffer, chan *pubsub.NewMessage) {
	t.Helper()
	ns, js := startNATS(t)
	ordersStream(t, js)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders.a", nil, h)
	publish(t, ps, "orders.a", "before", nil)
	require.Equal(t, "before", string(recv(t, got, waitFor).Data))
	return js, ps, log, got
}

// A rolling update sets replicas for the durable (here more than the single
// server can hold, as a cluster that lost nodes would refuse them). The
// durable's other settings are unchanged, and the update must still be made,
// or the log must name replicas, what the durable has and what the
// metadata asks for: a new durable with them is refused, and an existing one
// must not silently keep its old replica count.
func TestConsumerReplicasChangedByRollingUpdate(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ordersStream(t, js)
	first, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	h, got := collect()
	sctx, cancel := context.WithCancel(t.Context())
	require.NoError(t, first.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "orders.a"}, h))
	natstest.WaitConsumer(t, js, "ORDERS", ordersDurable)
	cancel()

	second, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "replicas": "3"})
	subscribe(t, second, "orders.a", nil, h)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "subscribed to topic") }, waitFor, tick, "log: %s", log)
	publish(t, second, "orders.a", "after", nil)
	assert.Equal(t, "after", string(recv(t, got, waitFor).Data), "the durable keeps delivering")
	info, err := consumerInfo(js, "ORDERS", ordersDurable)
	require.NoError(t, err)
	if info.Config.Replicas != 3 {
		assert.Contains(t, log.String(), "replicas", "the durable keeps %d replicas, and nothing says so", info.Config.Replicas)
		assert.Contains(t, log.String(), "nats consumer edit ORDERS "+ordersDurable)
	}
}
