package jetstream

import (
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

var unlimited = server.JetStreamAccountLimits{MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxConsumers: -1, MaxAckPending: -1}

// A stream the component cannot create for lack of server or account
// resources is named with the limit and the fix, not with a guess about
// overlapping subjects.
func TestCreateStreamBeyondResources(t *testing.T) {
	t.Parallel()
	smallStore := func(o *server.Options) { o.JetStreamMaxStore = 1 << 20 }
	oneStream, boundedOnly := unlimited, unlimited
	oneStream.MaxStreams = 1
	boundedOnly.MaxBytesRequired = true
	cases := []struct {
		name    string
		server  func(*server.Options)
		account *server.JetStreamAccountLimits
		props   map[string]string
		want    []string
	}{
		{"storage", smallStore, nil, map[string]string{"streamMaxBytes": "10000000"}, []string{"streamMaxBytes", "10000000", "max_file_store"}},
		{"streams", nil, &oneStream, nil, []string{"at most 1 stream", "streamName", "max_streams"}},
		{"max bytes required", nil, &boundedOnly, nil, []string{"set streamMaxBytes"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var opts []func(*server.Options)
			if tc.server != nil {
				opts = append(opts, tc.server)
			}
			ns := natstest.Start(t, opts...)
			if tc.account != nil {
				require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": *tc.account}))
			}
			ps, _ := open(t, ns.ClientURL(), tc.props)
			if tc.account == &oneStream {
				publish(t, ps, "first", "x", nil)
			}
			err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "second", Data: []byte("x")})
			require.Error(t, err)
			t.Log(err)
			for _, s := range tc.want {
				assert.Contains(t, err.Error(), s)
			}
			assert.NotContains(t, err.Error(), "overlap")
		})
	}
}

// A publish refused because JetStream's storage is used up names the
// server's and the account's limits, and the settings that bound a stream.
func TestPublishBeyondStorage(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t, func(o *server.Options) { o.JetStreamMaxStore = 1 << 20 })
	ps, _ := open(t, ns.ClientURL(), nil)
	var err error
	for range 5 {
		if err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "filling", Data: make([]byte, 400<<10)}); err != nil {
			break
		}
	}
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindUnavailable, KindOf(err))
	for _, s := range []string{"no JetStream storage left", "max_file_store", "streamMaxBytes", "streamMaxAge"} {
		assert.Contains(t, err.Error(), s)
	}
}

// A subscription refused a consumer because the stream allows no more names
// max_consumers and the fixes in its log.
func TestConsumerBeyondStreamLimit(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "FEW", Subjects: []string{"few"}, MaxConsumers: 1})
	require.NoError(t, err)
	first, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "one", "autoProvision": "false"})
	h, _ := collect()
	subscribe(t, first, "few", nil, h)
	natstest.WaitConsumer(t, js, "FEW", "one-few")

	second, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "two", "autoProvision": "false"})
	subscribe(t, second, "few", nil, h)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "level=error") }, waitFor, tick)
	t.Log(log.String())
	for _, s := range []string{"max_consumers", "nats consumer ls FEW", "nats consumer rm FEW", `stream \"FEW\" allows at most 1 consumer`} {
		assert.Contains(t, log.String(), s)
	}
}

// The account's max_consumers, which nats-server applies to each stream,
// reached: a new durable and an ephemeral subscription name the account's
// limit, not the stream's (which has none), and deliver once the operator
// raises it; a replica of a durable that exists needs no consumer of its
// own and delivers all along.
func TestConsumerBeyondAccountLimit(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	limits := unlimited
	limits.MaxConsumers = 1
	require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": limits}))
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "MANY", Subjects: []string{"one", "two", "three"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "autoProvision": "false"})
	h, got := collect()
	subscribe(t, ps, "one", nil, h)
	natstest.WaitConsumer(t, js, "MANY", "app-one")
	subscribe(t, ps, "two", nil, h)
	subscribe(t, ps, "three", map[string]string{"consumerID": ""}, h)
	replica, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "autoProvision": "false"})
	subscribe(t, replica, "one", nil, h)
	for _, sub := range [][2]string{{"two", "app-two"}, {"three", "ephemeral"}} {
		var problem string
		require.Eventually(t, func() bool { problem = subscriptionProblem(ps, sub[0], sub[1]); return problem != "" }, waitFor, tick)
		t.Log(problem)
		for _, s := range []string{"the account allows at most 1 consumer on each stream", "max_consumers", "--js-consumer", "nats consumer rm MANY"} {
			assert.Contains(t, problem, s)
		}
	}
	assert.Empty(t, subscriptionProblem(replica, "one", "app-one"))
	for _, topic := range []string{"one", "two", "three"} {
		publish(t, ps, topic, topic, nil)
	}
	require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": unlimited}))
	seen := map[string]bool{}
	for range 3 {
		seen[recv(t, got, waitFor).Topic] = true
	}
	assert.Len(t, seen, 3)
}

// The account's JetStream storage limit (nats-server accounts, or nsc's
// --js-disk-storage) used up, rather than the server's: docs/troubleshooting.md
// promises the same explanation ("nats-server has no JetStream storage
// left", the account's JetStream limits, the fixes), and the same code as
// TestPublishBeyondStorage, since room comes back as messages leave.
func TestPublishBeyondAccountStorage(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	limits := unlimited
	limits.MaxStore = 1 << 20
	require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": limits}))
	ps, _ := open(t, ns.ClientURL(), nil)
	var err error
	for range 5 {
		if err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "filling", Data: make([]byte, 400<<10)}); err != nil {
			break
		}
	}
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindUnavailable, KindOf(err), "as when the server's storage is used up")
	for _, s := range []string{"no JetStream storage left", "account's JetStream limits", "streamMaxBytes"} {
		assert.Contains(t, err.Error(), s)
	}
}

// streamReplicas 3 against a single nats-server (a dev setup, or a cluster
// config applied to a lone server): JetStream refuses to create the stream
// ("replicas > 1 not supported in non-clustered mode", code 500). That is a
// configuration refusal: retrying cannot help, so it must not be Unavailable
// (daprd would retry every publish), and the error must name the metadata
// key that asked for it.
func TestCreateStreamWithMoreReplicasThanServers(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamReplicas": "3"})
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "replicated", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err), "retrying cannot create the stream")
	assert.Contains(t, err.Error(), "streamReplicas")
	assert.Empty(t, streamNames(t, js))
}

// subscriptionProblem is the problem Stats reports for the subscriptions to
// topic with consumer ("ephemeral" for one without a durable), or "".
func subscriptionProblem(ps *PubSub, topic, consumer string) string {
	for _, s := range ps.Stats().Subscriptions {
		if s.Topic == topic && s.Consumer == consumer {
			return s.Problem
		}
	}
	return ""
}

// A stream whose consumer limits (consumer_limits inactive_threshold) are
// shorter than the time the component asks JetStream to keep an ephemeral
// consumer without a subscriber: no metadata sets that time, so JetStream
// refusing the consumer ("consumer inactive threshold exceeds system limit
// of 1m0s") would leave the subscription without messages until an operator
// raised the stream's limit. It must subscribe, within the limit.
func TestEphemeralUnderStreamInactiveLimit(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "SHORT", Subjects: []string{"short"},
		ConsumerLimits: natsjs.StreamConsumerLimits{InactiveThreshold: time.Minute}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	h, got := collect()
	subscribe(t, ps, "short", nil, h)
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), "subscribed to topic") || subscriptionProblem(ps, "short", "ephemeral") != ""
	}, waitFor, tick)
	require.Empty(t, subscriptionProblem(ps, "short", "ephemeral"))
	publish(t, ps, "short", "x", nil)
	recv(t, got, waitFor)
	for _, ci := range consumerInfos(t, js, "SHORT") {
		assert.LessOrEqual(t, ci.Config.InactiveThreshold, time.Minute)
		assert.Positive(t, ci.Config.InactiveThreshold, "an ephemeral consumer left behind is removed")
	}
}

// The component's maxAckPending (1000 unless set) above what the stream's
// consumer limits or the account's JetStream limits allow: JetStream refuses
// the consumer with "consumer max ack pending exceeds system limit of 100",
// which names neither the setting to lower nor the limit to raise. The
// subscription must say both, keep retrying, and deliver once the operator
// raises the limit, without a restart.
func TestMaxAckPendingBeyondLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range ackPendingLimits() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns, js, ps, _, got := underAckPendingLimit(t, tc, map[string]string{"consumerID": "app", "maxAckPending": "1000"})
			var problem string
			require.Eventually(t, func() bool {
				problem = subscriptionProblem(ps, "capped", "app-capped")
				return problem != ""
			}, waitFor, tick)
			t.Log(problem)
			for _, s := range tc.want {
				assert.Contains(t, problem, s)
			}
			publish(t, ps, "capped", "held", nil)
			tc.raise(t, ns, js)
			assert.Equal(t, "held", string(recv(t, got, waitFor).Data))
			assert.Empty(t, subscriptionProblem(ps, "capped", "app-capped"))
		})
	}
}

// Without maxAckPending in the metadata, a subscription takes the limit an
// operator set below the default of 1000, as JetStream does for a consumer
// that sets none, rather than being refused until the app sets it.
func TestMaxAckPendingUnsetFollowsALowerLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range ackPendingLimits() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js, ps, log, got := underAckPendingLimit(t, tc, map[string]string{"consumerID": "app"})
			publish(t, ps, "capped", "first", nil)
			assert.Equal(t, "first", string(recv(t, got, waitFor).Data))
			name, err := js.StreamNameBySubject(ctx(t), "capped")
			require.NoError(t, err)
			info := settledConsumer(t, js, name, "app-capped")
			assert.Equal(t, 100, info.Config.MaxAckPending)
			assert.NotContains(t, log.String(), "settings other than this subscription's")
		})
	}
}

// ackPendingLimit is a max_ack_pending limit of 100 that an operator sets,
// and raises.
type ackPendingLimit struct {
	name  string
	setUp func(t *testing.T, ns *server.Server, js natsjs.JetStream)
	raise func(t *testing.T, ns *server.Server, js natsjs.JetStream)
	want  []string // in the refusal of a maxAckPending of 1000
}

// underAckPendingLimit sets tc's limit up and subscribes to its topic with
// props.
func underAckPendingLimit(t *testing.T, tc ackPendingLimit, props map[string]string) (*server.Server, natsjs.JetStream, *PubSub, *logBuffer, chan *pubsub.NewMessage) {
	t.Helper()
	ns, js := startNATS(t)
	tc.setUp(t, ns, js)
	ps, log := open(t, ns.ClientURL(), props)
	h, got := collect()
	subscribe(t, ps, "capped", nil, h)
	return ns, js, ps, log, got
}

func ackPendingLimits() []ackPendingLimit {
	return []ackPendingLimit{
		{"stream", func(t *testing.T, _ *server.Server, js natsjs.JetStream) {
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "CAPPED", Subjects: []string{"capped"},
				ConsumerLimits: natsjs.StreamConsumerLimits{MaxAckPending: 100}})
			require.NoError(t, err)
		}, func(t *testing.T, _ *server.Server, js natsjs.JetStream) {
			_, err := js.UpdateStream(ctx(t), natsjs.StreamConfig{Name: "CAPPED", Subjects: []string{"capped"}})
			require.NoError(t, err)
		}, []string{`stream "CAPPED"`, "consumer_limits", "max_ack_pending of 100", "maxAckPending is 1000", "nats stream edit CAPPED"}},
		{"account", func(t *testing.T, ns *server.Server, _ natsjs.JetStream) {
			limits := unlimited
			limits.MaxAckPending = 100
			require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": limits}))
		}, func(t *testing.T, ns *server.Server, _ natsjs.JetStream) {
			require.NoError(t, ns.GlobalAccount().UpdateJetStreamLimits(map[string]server.JetStreamAccountLimits{"": unlimited}))
		}, []string{"limit of 100", "maxAckPending is 1000", "max_ack_pending", "account's JetStream limits"}},
	}
}
