package jetstream

import (
	"strings"
	"testing"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// A password with a comma, written as it is in natsURL, reaches the server
// whole: nats.go splits its URL argument at every comma.
func TestInitWithCommaInURLPassword(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t, func(o *server.Options) { o.Username, o.Password = "alice", "s3cr,et" })
	hostPort := strings.TrimPrefix(ns.ClientURL(), "nats://")

	for name, natsURL := range map[string]string{
		"one URL":         "nats://alice:s3cr,et@" + hostPort,
		"in a list":       "nats://alice:s3cr,et@" + hostPort + ", nats://alice:s3cr,et@" + hostPort,
		"percent-encoded": "nats://alice:s3cr%2Cet@" + hostPort,
	} {
		t.Run(name, func(t *testing.T) {
			ps, buf := open(t, natsURL, nil)
			publish(t, ps, "userinfo", "hello", nil)
			assert.NotContains(t, buf.String(), "s3cr")
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		ps, buf := newInstance(t)
		err := ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Properties: map[string]string{
			"natsURL": "nats://alice:s3cr,wrong@" + hostPort + ",nats://alice:s3cr,wrong@" + hostPort,
		}}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "rejected the credentials")
		assert.Contains(t, err.Error(), "nats://***@"+hostPort+",nats://***@"+hostPort)
		for _, text := range []string{err.Error(), buf.String()} {
			assert.NotContains(t, text, "alice")
			assert.NotContains(t, text, "s3cr")
			assert.NotContains(t, text, "wrong")
		}
		require.NoError(t, ps.Close())
	})
}
