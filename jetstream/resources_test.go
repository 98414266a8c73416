package jetstream

import (
	"strings"
	"testing"

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
	for _, s := range []string{"max_consumers", "nats consumer ls FEW", "nats consumer rm FEW"} {
		assert.Contains(t, log.String(), s)
	}
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
