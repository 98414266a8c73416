package jetstream

import (
	"fmt"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A publish to a stream that is full and discards new messages names the
// stream, the limit it reached, how messages leave it and the fixes, not
// only the server's "maximum messages exceeded". It stays retriable: space
// may come back.
func TestPublishToFullStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	cases := []struct {
		topic   string
		props   map[string]string
		publish int
		want    []string
	}{
		{"full.msgs", map[string]string{"streamMaxMsgs": "2"}, 2,
			[]string{"at most 2 messages", "max_msgs", "streamMaxMsgs", "only when removed", "streamDiscard old"}},
		{"full.bytes", map[string]string{"streamMaxBytes": "1000", "streamMaxAge": "1h"}, 2,
			[]string{"at most 1000 bytes", "max_bytes", "streamMaxBytes", "max_age of 1h0m0s", "streamDiscard old"}},
		{"full.work", map[string]string{"streamMaxMsgs": "1", "streamRetention": "workqueue"}, 1,
			[]string{"1 message ", "as subscribers acknowledge them"}},
	}
	for _, tc := range cases {
		props := map[string]string{"streamDiscard": "new"}
		for k, v := range tc.props {
			props[k] = v
		}
		ps, _ := open(t, ns.ClientURL(), props)
		for range tc.publish {
			require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: tc.topic, Data: make([]byte, 400)}))
		}
		stream, err := js.StreamNameBySubject(ctx(t), tc.topic)
		require.NoError(t, err)
		full := fmt.Sprintf("stream %q is full", stream)
		err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: tc.topic, Data: make([]byte, 400)})
		require.Error(t, err, tc.topic)
		t.Log(err)
		assert.Equal(t, KindUnavailable, KindOf(err))
		for _, s := range append(tc.want, full) {
			assert.Contains(t, err.Error(), s)
		}

		entries := textEntries("b", 3)
		for i := range entries {
			entries[i].Event = make([]byte, 400)
		}
		resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: tc.topic, Entries: entries})
		require.Error(t, err)
		require.Len(t, resp.FailedEntries, 3)
		for _, f := range resp.FailedEntries {
			assert.ErrorContains(t, f.Error, full)
		}

		assert.Equal(t, uint64(1+3), publishOutcomes(ps, tc.topic)[OutcomeFull])

		// An atomic bulk needs room for every entry.
		_, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: tc.topic, Entries: entries, Metadata: atomicBulk})
		require.Error(t, err)
		t.Log(err)
		for _, s := range []string{full, "nothing was stored", "room for all 3 of its entries"} {
			assert.Contains(t, err.Error(), s)
		}
	}
}

// A stream that an operator set to discard new messages per subject names
// that limit.
func TestPublishToFullSubject(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{
		Name: "PERSUBJECT", Subjects: []string{"per.>"}, Discard: natsjs.DiscardNew,
		DiscardNewPerSubject: true, MaxMsgsPerSubject: 1, MaxAge: time.Hour,
	})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	publish(t, ps, "per.a", "first", nil)
	publish(t, ps, "per.b", "other subject", nil)
	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "per.a", Data: []byte("second")})
	require.Error(t, err)
	t.Log(err)
	for _, s := range []string{`stream "PERSUBJECT" is full for topic "per.a"`, "at most 1 message of each subject", "max_msgs_per_subject", "streamMaxMsgsPerSubject", "max_age of 1h0m0s"} {
		assert.Contains(t, err.Error(), s)
	}
}

// publishOutcomes is the instance's count of publishes to topic by outcome.
func publishOutcomes(ps *PubSub, topic string) map[string]uint64 {
	for _, p := range ps.Stats().Publish {
		if p.Topic == topic {
			return p.Outcomes
		}
	}
	return nil
}

// An operator moves a topic to another stream (nats stream edit OLD
// --subjects orders.b; nats stream add NEW --subjects orders.a
// --max-msgs 1 --discard new --max-msg-size 100), while the component
// publishes to it: plain publishes follow, stored in NEW. When NEW then
// refuses one, the error must name NEW and its limit, which the operator has
// to raise, not the stream that held the topic before, and its "-1".
func TestRefusalAfterTheTopicMovedNamesTheStreamThatHoldsIt(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"orders.a", "orders.b"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	publish(t, ps, "orders.a", "before the move", nil)

	cfg := streamInfo(t, js, "OLD").Config
	cfg.Subjects = []string{"orders.b"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"orders.a"}, MaxMsgs: 1, Discard: natsjs.DiscardNew, MaxMsgSize: 100})
	require.NoError(t, err)
	publish(t, ps, "orders.a", "after the move", nil)
	require.Equal(t, uint64(1), msgCount(t, js, "NEW"))

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: []byte("no room")})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), `stream "NEW" is full: it holds at most 1 message `)
	assert.NotContains(t, err.Error(), `"OLD"`)

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders.a", Entries: textEntries("m", 2)})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 2)
	for _, f := range resp.FailedEntries {
		assert.ErrorContains(t, f.Error, `stream "NEW" is full`, "entry %s", f.EntryId)
	}

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders.a", Data: make([]byte, 200)})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), `stream "NEW" takes messages of at most 100 bytes`)
	assert.Equal(t, uint64(1), msgCount(t, js, "NEW"))
}
