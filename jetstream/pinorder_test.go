package jetstream

import (
	"context"
	"sync"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/stretchr/testify/require"
)

// openAlone is open for an instance in a process of its own, as each
// replica of a Kubernetes Deployment is: it shares no handover desk with
// the test's other instances.
func openAlone(t *testing.T, url string, props map[string]string) *PubSub {
	t.Helper()
	ps, _ := newInstance(t)
	ps.desk = newHandoverDesk()
	md := map[string]string{"natsURL": url}
	for k, v := range props {
		md[k] = v
	}
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Name: "test", Properties: md}}))
	t.Cleanup(func() { require.NoError(t, ps.Close()) })
	return ps
}

// endsWhileHandling wraps h: once end is closed, the next message it gets
// stays in the app until the subscription ends or resumed closes, as a
// message does that daprd's shutdown finishes. handling closes when that
// message arrived.
func endsWhileHandling(h pubsub.Handler, end, resumed <-chan struct{}) (pubsub.Handler, <-chan struct{}) {
	handling := make(chan struct{})
	var once sync.Once
	return func(ctx context.Context, m *pubsub.NewMessage) error {
		select {
		case <-end:
		default:
			return h(ctx, m)
		}
		err := h(ctx, m)
		once.Do(func() { close(handling) })
		select {
		case <-ctx.Done():
		case <-resumed:
		}
		return err
	}, handling
}

// pinnedProps are the metadata of the replicas below: pinned, with a
// window of 10 messages, so that a replica that stops holds messages its
// app has not seen.
func pinnedProps() map[string]string {
	return map[string]string{"consumerID": "app", "priorityPolicy": "pinned", "pinnedTTL": "30s", "maxInFlight": "10", "deliverAll": "true"}
}

// A pinned replica holds messages its app has not seen when it stops in
// order, as in a rolling update. What it held must reach the replica pinned
// next before anything newer, or the topic is no longer processed in
// stream order.
func TestPinnedReplicaStoppedInOrderKeepsTheOrder(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"rolling update", "rolling update, paused first", "daprd restarted", "paused past pinnedTTL", "paused and resumed"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			l := newSerialLog(20 * time.Millisecond)
			props := pinnedProps()
			if how == "paused past pinnedTTL" {
				props["pinnedTTL"] = "3s"
			}
			old := openAlone(t, ns.ClientURL(), props)
			end, resumed := make(chan struct{}), make(chan struct{})
			h, handling := endsWhileHandling(l.handler("old"), end, resumed)
			subCtx, endSubscription := context.WithCancel(t.Context())
			defer endSubscription()
			require.NoError(t, old.Subscribe(subCtx, pubsub.SubscribeRequest{Topic: "seq"}, h))
			waitConsumer(t, js, "seq", "app-seq")
			publishRaw(t, js, "seq", "a", 1)
			require.Eventually(t, func() bool { return l.has("a0") }, waitFor, tick, "the first replica is pinned")

			other := openAlone(t, otherPodURL(ns), props)
			subscribe(t, other, "seq", nil, l.handler("other"))
			publishRaw(t, js, "seq", "b", 60)
			require.Eventually(t, func() bool { return l.count() >= 10 }, waitFor, tick)
			close(end)
			closedWithin(t, handling, waitFor, "the old replica's app handling a message")
			switch how {
			case "rolling update, paused first", "paused past pinnedTTL", "paused and resumed":
				require.NoError(t, old.Pause(ctx(t)))
			}
			switch how {
			case "paused past pinnedTTL":
				// daprd stays paused: what the old replica held goes to
				// the other one before the pin would end.
			case "paused and resumed":
				require.NoError(t, old.Resume(ctx(t)))
				close(resumed)
			case "daprd restarted":
				endSubscription()
				require.NoError(t, old.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: "seq"}, l.handler("restarted")))
			default:
				endSubscription()
				require.NoError(t, old.Close())
			}
			stopped := time.Now()
			publishRaw(t, js, "seq", "c", 10)
			want := append(append(names("a", 0, 1), names("b", 0, 60)...), names("c", 0, 10)...)
			require.Eventually(t, func() bool { return l.has(want...) }, waitFor, tick, "messages lost")
			t.Logf("the rest handled %s after the old replica stopped", time.Since(stopped).Round(10*time.Millisecond))
			assertSerial(t, l)
		})
	}
}
