package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A topic that an operator moves to another stream (its subject removed
// from the old stream, then added to the new one) keeps reaching its
// subscribers.
func TestSubscriptionFollowsMovedTopic(t *testing.T) {
	t.Parallel()
	for _, durable := range []bool{true, false} {
		t.Run(fmt.Sprintf("durable=%v", durable), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			streamsOldAndNew(t, js)
			props := map[string]string{"autoProvision": "false"}
			if durable {
				props["consumerID"] = "app"
			}
			ps, _ := open(t, ns.ClientURL(), props)
			h, got := collect()
			subscribe(t, ps, "moved", nil, h)
			publish(t, ps, "moved", "before", nil)
			assert.Equal(t, "before", string(recv(t, got, waitFor).Data))

			moveTopic(t, js)
			_, err := js.Publish(ctx(t), "moved", []byte("after"))
			require.NoError(t, err)
			assert.Equal(t, "after", string(recv(t, got, waitFor).Data))
		})
	}
}

// A topic not seen before subscribes on the stream that holds it now, also
// when what was read of another stream said that its wildcard held it:
// since then, an operator narrowed that stream and made a new one for the
// topic.
func TestSubscriptionToANewTopicOfANarrowedWildcard(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app"})
	publish(t, ps, "orders.standard", "x", nil)

	_, err = js.UpdateStream(ctx(t), natsjs.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.standard"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "VIP", Subjects: []string{"orders.vip.>"}})
	require.NoError(t, err)
	h, got := collect()
	subscribe(t, ps, "orders.vip.1", nil, h)
	require.Eventually(t, func() bool { return len(consumerInfos(t, js, "VIP")) == 1 }, waitFor, tick, "no consumer on stream VIP")
	publish(t, ps, "orders.vip.1", "vip", nil)
	assert.Equal(t, "vip", string(recv(t, got, waitFor).Data))
	assert.Equal(t, uint64(1), msgCount(t, js, "VIP"))
	assert.NotContains(t, log.String(), `on stream \"ORDERS\"`, "subscribed on the stream that held the topic no more")
}

// Messages the old stream still holds for a moved topic reach the app
// before the subscription follows the topic, and those published to the new
// stream after them.
func TestSubscriptionDrainsBeforeFollowingMovedTopic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	streamsOldAndNew(t, js)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "maxInFlight": "1"})
	got := make(chan string, 20)
	failed := false
	subscribe(t, ps, "moved", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		if string(m.Data) == "old-2" && !failed {
			failed = true
			return errors.New("once more")
		}
		time.Sleep(400 * time.Millisecond) // a slow app keeps a backlog in OLD
		got <- string(m.Data)
		return nil
	})
	// The backlog is the durable's on OLD only once it is there: a topic
	// moved before then is followed to NEW by a new durable, for which OLD
	// holds nothing.
	require.Eventually(t, func() bool { return len(consumerInfos(t, js, "OLD")) == 1 }, waitFor, tick, "no consumer on stream OLD")
	for i := range 5 {
		publish(t, ps, "moved", fmt.Sprintf("old-%d", i), nil)
	}
	moveTopic(t, js)
	_, err := js.Publish(ctx(t), "moved", []byte("new"))
	require.NoError(t, err)

	seen := map[string]bool{}
	for len(seen) < 6 {
		seen[recv(t, got, waitFor)] = true
	}
	assert.True(t, seen["new"])
}

// streamsOldAndNew creates stream OLD, which holds topic moved, and NEW.
func streamsOldAndNew(t *testing.T, js natsjs.JetStream) {
	t.Helper()
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"moved", "stays"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"other"}})
	require.NoError(t, err)
}

// moveTopic moves topic moved from OLD to NEW, as an operator would with
// nats stream edit.
func moveTopic(t *testing.T, js natsjs.JetStream) {
	t.Helper()
	_, err := js.UpdateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"stays"}})
	require.NoError(t, err)
	_, err = js.UpdateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"other", "moved"}})
	require.NoError(t, err)
}

// A subscription with deliverPolicy new follows a moved topic: what is
// published to the topic's new stream after the move, before the
// subscription notices it (up to about 15 s), still arrives.
func TestMovedTopicWithDeliverNew(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	streamsOldAndNew(t, js)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false", "consumerID": "app", "deliverPolicy": "new"})
	h, got := collect()
	subscribe(t, ps, "moved", nil, h)
	waitConsumer(t, js, "OLD", "app-moved")
	publish(t, ps, "moved", "before", nil)
	require.Equal(t, "before", string(recv(t, got, waitFor).Data))

	moveTopic(t, js)
	_, err := js.Publish(ctx(t), "moved", []byte("after"))
	require.NoError(t, err)
	require.Equal(t, "after", string(recv(t, got, waitFor+refreshIdle).Data))
}

// An operator gives the topic's stream a subject transform (nats stream
// edit --transform-source orders.> --transform-destination kept.orders.>),
// so that it stores the topic's messages under other subjects. A publish
// is then acknowledged, and the subscription either delivers it or says,
// as an error, why it cannot: it does not wait silently.
func TestStreamSubjectTransformedByOperator(t *testing.T) {
	t.Parallel()
	js, ps, log, got := runningOrders(t)
	st, err := js.Stream(ctx(t), "ORDERS")
	require.NoError(t, err)
	cfg := st.CachedInfo().Config
	cfg.SubjectTransform = &natsjs.SubjectTransformConfig{Source: "orders.>", Destination: "kept.orders.>"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	publish(t, ps, "orders.a", "after", nil)
	deadline := time.After(waitFor + refreshIdle)
	for {
		select {
		case m := <-got:
			require.Equal(t, "after", string(m.Data))
			return
		case <-time.After(tick):
			if strings.Contains(log.String(), "level=error") {
				require.Contains(t, log.String(), "subject transform")
				require.Eventually(t, func() bool {
					err := ps.Ping(ctx(t))
					return err != nil && strings.Contains(err.Error(), "subject transform")
				}, waitFor, tick, "Ping does not report the stalled subscription")
				return
			}
			continue
		case <-deadline:
		}
		break
	}
	t.Fatalf("the publish was acknowledged (the stream holds %d messages), and the subscription neither delivered it nor logged an error; Ping: %v", count(js, "ORDERS"), ps.Ping(ctx(t)))
}
