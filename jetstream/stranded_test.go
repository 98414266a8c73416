package jetstream

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// An operator moves a topic to another stream while its app is down, with
// messages waiting for the app's durable on the old stream: once the app
// subscribes again, those arrive, and then what the new stream holds,
// whatever the deliver policy.
func TestBacklogOfATopicMovedWhileTheAppWasDown(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"all", "new"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			streamsOldAndNew(t, js)
			props := map[string]string{"autoProvision": "false", "consumerID": "app", "deliverPolicy": policy}
			before, _ := open(t, ns.ClientURL(), props)
			h, got := collect()
			subscribe(t, before, "moved", nil, h)
			waitConsumer(t, js, "OLD", "app-moved")
			publish(t, before, "moved", "handled", nil)
			require.Equal(t, "handled", string(recv(t, got, waitFor).Data))
			settledConsumer(t, js, "OLD", "app-moved")
			require.NoError(t, before.Close())

			for i := range 3 {
				_, err := js.Publish(ctx(t), "moved", []byte(fmt.Sprint("waiting-", i)))
				require.NoError(t, err)
			}
			moveTopic(t, js)
			_, err := js.Publish(ctx(t), "moved", []byte("new"))
			require.NoError(t, err)

			after, log := open(t, ns.ClientURL(), props)
			h, got = collect()
			subscribe(t, after, "moved", nil, h)
			for _, want := range []string{"waiting-0", "waiting-1", "waiting-2", "new"} {
				require.Equal(t, want, string(recv(t, got, waitFor+refreshIdle).Data))
			}
			assert.Contains(t, log.String(), `the topic was moved to stream \"NEW\" while no subscription read it`)
			settledConsumer(t, js, "OLD", "app-moved")
			settledConsumer(t, js, "NEW", "app-moved")
			nothing(t, got, 500*time.Millisecond)
		})
	}
}

// A user whom NATS does not allow to read consumers on other streams
// subscribes as before: the search for a durable left on another stream
// gives up within a second, and says what it could not do.
func TestConsumerReadsDeniedStillSubscribe(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "admin", Password: "secret"},
			{Username: "app", Password: "secret", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{"$JS.API.CONSUMER.INFO.OTHER.>"}},
			}},
		}
	})
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("admin", "secret"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OTHER", Subjects: []string{"other"}})
	require.NoError(t, err)

	ps, log := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app"})
	h, got := collect()
	subscribe(t, ps, "orders", nil, h)
	publish(t, ps, "orders", "x", nil)
	assert.Equal(t, "x", string(recv(t, got, waitFor).Data))
	assert.Contains(t, log.String(), `could not look for consumer \"app-orders\"`)
}
