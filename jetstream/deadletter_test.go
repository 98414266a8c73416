package jetstream

import (
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeadLetterInSameStream: daprd sends a message its app dropped to the
// dead-letter topic by publishing the delivery's data with the delivery's
// metadata (msgId included). With both topics in one stream, the dead letter
// must not be discarded as a duplicate of the original (found by the e2e
// tests against daprd).
func TestDeadLetterInSameStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{
		"consumerID": "app", "streamName": "S", "streamSubjects": "S.>",
	})
	h, got := collect()
	subscribe(t, ps, "S.orders", nil, h)
	dl, dead := collect()
	subscribe(t, ps, "S.dead", nil, dl)

	ce := `{"specversion":"1.0","id":"ce-1","source":"app","type":"t","data":{"n":1}}`
	publish(t, ps, "S.orders", ce, nil)
	m := recv(t, got, waitFor)
	require.Equal(t, "ce-1", m.Metadata[MetadataMsgID])

	// What daprd's sendToDeadLetter does.
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{
		PubsubName: "test", Topic: "S.dead", Data: m.Data, Metadata: m.Metadata, ContentType: m.ContentType,
	}))
	d := recv(t, dead, waitFor)
	assert.JSONEq(t, ce, string(d.Data))
	assert.Equal(t, "S.dead", d.Metadata[MetadataSubject])
	assert.Equal(t, uint64(2), msgCount(t, js, "S"))

	// A retried dead-letter publish is still de-duplicated.
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{
		PubsubName: "test", Topic: "S.dead", Data: m.Data, Metadata: m.Metadata,
	}))
	assert.Equal(t, uint64(2), msgCount(t, js, "S"))
}
