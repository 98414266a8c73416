package jetstream

import (
	"fmt"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
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
