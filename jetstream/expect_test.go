package jetstream

import (
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// Optimistic concurrency: the expected* publish metadata become JetStream's
// Nats-Expected-* checks. A mismatch is a rejection (not retried) whose error
// names the key, what was expected and what the stream holds; the message is
// not stored.
func TestPublishExpectations(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "LEDGER", "streamSubjects": "ledger.>"})
	pub := func(topic, data string, md map[string]string) error {
		return ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: topic, Data: []byte(data), Metadata: md})
	}
	rejected := func(t *testing.T, err error, contains ...string) {
		t.Helper()
		require.Error(t, err)
		t.Log(err)
		assert.Equal(t, KindRejected, KindOf(err), "a failed expectation is not worth retrying: %v", err)
		for _, s := range contains {
			assert.Contains(t, err.Error(), s)
		}
	}

	// The first event of an account: nothing on its subject yet.
	require.NoError(t, pub("ledger.acct1", "opened", map[string]string{"expectedLastSubjectSequence": "0"}))
	rejected(t, pub("ledger.acct1", "opened again", map[string]string{"expectedLastSubjectSequence": "0"}),
		"expectedLastSubjectSequence", `"0"`, "1")
	// Appending after what was read.
	require.NoError(t, pub("ledger.acct2", "opened", nil))
	require.NoError(t, pub("ledger.acct1", "deposit", map[string]string{"expectedLastSubjectSequence": "1"}))
	rejected(t, pub("ledger.acct1", "stale deposit", map[string]string{"expectedLastSubjectSequence": "1"}),
		"expectedLastSubjectSequence", "3")
	require.NoError(t, pub("ledger.acct1", "withdraw", map[string]string{"expectedLastSequence": "3"}))
	rejected(t, pub("ledger.acct2", "stale", map[string]string{"expectedLastSequence": "3"}),
		"expectedLastSequence", `"3"`, "4")
	// The last message id, as the msgId it was published with.
	require.NoError(t, pub("ledger.acct1", "fee", map[string]string{"msgId": "fee-1", "expectedLastSequence": "4"}))
	require.NoError(t, pub("ledger.acct1", "fee 2", map[string]string{"msgId": "fee-2", "expectedLastMsgId": "fee-1"}))
	rejected(t, pub("ledger.acct1", "fee 3", map[string]string{"msgId": "fee-3", "expectedLastMsgId": "fee-1"}),
		"expectedLastMsgId", `"fee-1"`, "fee-2")
	require.NoError(t, pub("ledger.acct1", "fee 3", map[string]string{"expectedStream": "LEDGER"}))
	rejected(t, pub("ledger.acct1", "elsewhere", map[string]string{"expectedStream": "ORDERS"}),
		"expectedStream", `"ORDERS"`, "LEDGER")

	// Only the successful publishes were stored, and the keys never became
	// headers of their own.
	assert.Equal(t, uint64(7), msgCount(t, js, "LEDGER"))
	st, err := js.Stream(ctx(t), "LEDGER")
	require.NoError(t, err)
	for seq := uint64(1); seq <= 7; seq++ {
		m, err := st.GetMsg(ctx(t), seq)
		require.NoError(t, err)
		for k := range m.Header {
			assert.NotContains(t, []string{"expectedLastSequence", "expectedLastSubjectSequence", "expectedLastMsgId", "expectedStream"}, k)
		}
	}
	last, err := st.GetMsg(ctx(t), 6)
	require.NoError(t, err)
	assert.Equal(t, "ledger.acct1:fee-2", last.Header.Get(natsjs.MsgIDHeader))
}

func TestPublishExpectationBadValues(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	for key, value := range map[string]string{
		"expectedLastSequence":        "-1",
		"expectedLastSubjectSequence": "three",
		"expectedLastMsgId":           "",
		"expectedStream":              "ORDERS.*",
	} {
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("x"), Metadata: map[string]string{key: value}})
		require.Error(t, err, key)
		assert.Equal(t, KindInvalid, KindOf(err), "%s = %q: %v", key, value, err)
		assert.Contains(t, err.Error(), key)
		assert.Contains(t, err.Error(), `"`+value+`"`)
	}
	// Bulk entries carry their own expectations and fail one by one.
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "a", Event: []byte("a"), ContentType: "text/plain", Metadata: map[string]string{"expectedLastSubjectSequence": "0"}},
		{EntryId: "b", Event: []byte("b"), ContentType: "text/plain", Metadata: map[string]string{"expectedLastSequence": "x"}},
	}})
	require.Error(t, err)
	require.Len(t, resp.FailedEntries, 1)
	assert.Equal(t, "b", resp.FailedEntries[0].EntryId)
	assert.Contains(t, resp.FailedEntries[0].Error.Error(), "expectedLastSequence")
}

// An operator moves a topic to another stream (nats stream edit OLD
// --subjects ledger.b; nats stream add NEW --subjects ledger.a). An app
// that still expects OLD is refused, and the error must say where the topic
// is stored now, so that it can read again from there: not that it is stored
// in the very stream the app expected.
func TestExpectedStreamAfterTheTopicMoved(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "OLD", Subjects: []string{"ledger.a", "ledger.b"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	publish(t, ps, "ledger.a", "opened", map[string]string{"expectedStream": "OLD"})

	cfg := streamInfo(t, js, "OLD").Config
	cfg.Subjects = []string{"ledger.b"}
	_, err = js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "NEW", Subjects: []string{"ledger.a"}})
	require.NoError(t, err)

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "ledger.a", Data: []byte("deposit"), Metadata: map[string]string{"expectedStream": "OLD"}})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.Contains(t, err.Error(), `topic "ledger.a" is stored in stream "NEW"`)
	assert.Zero(t, msgCount(t, js, "NEW"))
}

// The last message of the topic came from a plain NATS publisher (nats pub
// -H Nats-Msg-Id:m1, a bridge), and deliveries report its id as msgId "m1".
// An app that appends after it with expectedLastMsgId "m1" is refused, since
// the component checks the id scoped to the topic; the error must then not
// say that the expectation failed because the last message has msgId "m1",
// the very value expected, but why it cannot match and what to use instead.
func TestExpectedLastMsgIDOfAPlainNATSPublish(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	publish(t, ps, "ledger", "opened", nil)
	_, err := js.PublishMsg(ctx(t), &nats.Msg{Subject: "ledger", Data: []byte("native"), Header: nats.Header{natsjs.MsgIDHeader: {"m1"}}})
	require.NoError(t, err)

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "ledger", Data: []byte("after m1"), Metadata: map[string]string{"expectedLastMsgId": "m1"}})
	require.Error(t, err)
	t.Log(err)
	assert.NotContains(t, err.Error(), `does not hold: the stream's last message has msgId "m1"`, "the error contradicts itself")
	assert.Contains(t, err.Error(), "expectedLastSequence", "the error names what an app can use instead")
}

// NATS goes away after it stored an append guarded by
// expectedLastSubjectSequence, before its acknowledgement reached the
// component, and comes back with its store. The publish cannot know whether
// the append was stored, and must say so: an app told only that NATS was
// not connected retries (Unavailable invites it), and its own append then
// fails the check, FailedPrecondition, as if another writer had appended.
func TestPublishExpectationAckLostInAnOutage(t *testing.T) {
	t.Parallel()
	ns, o := startRestartable(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	publish(t, ps, "expout", "opened", nil)

	lost := px.dropFrom(`{"stream":"expout","seq":2`)
	md := map[string]string{"expectedLastSubjectSequence": "1"}
	res := make(chan error, 1)
	go func() {
		res <- ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "expout", Data: []byte("deposit"), Metadata: md})
	}()
	closedWithin(t, lost, waitFor, "the acknowledgement")
	natstest.Stop(ns)
	back := runAgain(t, o)
	err := recv(t, res, waitFor)
	_, js := natstest.Client(t, back)
	require.Equal(t, uint64(2), msgCount(t, js, "expout"), "JetStream stored the append")
	t.Logf("Publish: %v", err)
	require.Error(t, err)
	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, tick)
	retry := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "expout", Data: []byte("deposit"), Metadata: md})
	t.Logf("the retry: %v", retry)
	assert.Contains(t, err.Error(), "may be stored", "the publish was stored, and its error does not say that it may have been")
}
