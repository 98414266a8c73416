package jetstream

import (
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// W3C trace context crosses NATS: a CloudEvent's traceparent and tracestate
// become NATS headers of those names (metadata that sets a traceparent wins,
// as for raw payloads), and a traceparent header that a native NATS client
// published reaches daprd in the delivery's metadata.
func TestTraceContextAcrossNATS(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "streamName": "TRACES", "streamSubjects": "traces.>"})
	const (
		parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		state  = "congo=t61rcWkgMzE"
	)
	ce := `{"specversion":"1.0","id":"e1","source":"s","type":"t","traceparent":"` + parent + `","tracestate":"` + state + `","data":{}}`
	pub := func(topic, data string, md map[string]string) {
		t.Helper()
		require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: topic, Data: []byte(data), Metadata: md}))
	}
	pub("traces.ce", ce, nil)
	pub("traces.override", ce, map[string]string{"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"})
	pub("traces.raw", "raw bytes", map[string]string{"traceparent": parent})
	pub("traces.plain", `{"id":"x","traceparent":"not a CloudEvent"}`, nil)

	st, err := js.Stream(ctx(t), "TRACES")
	require.NoError(t, err)
	header := func(seq uint64) nats.Header {
		m, err := st.GetMsg(ctx(t), seq)
		require.NoError(t, err)
		return m.Header
	}
	assert.Equal(t, parent, header(1).Get(HeaderTraceParent))
	assert.Equal(t, state, header(1).Get(HeaderTraceState))
	assert.Equal(t, "00-11111111111111111111111111111111-2222222222222222-01", header(2).Get(HeaderTraceParent))
	assert.Empty(t, header(2).Get(HeaderTraceState), "the CloudEvent's tracestate belongs to its own traceparent")
	assert.Equal(t, parent, header(3).Get(HeaderTraceParent))
	assert.Empty(t, header(4).Get(HeaderTraceParent), "a payload that is not a CloudEvent has no trace context")

	// A native NATS publisher's trace context reaches the subscriber.
	h, got := collect()
	subscribe(t, ps, "traces.native", map[string]string{"deliverPolicy": "all"}, h)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	msg := nats.NewMsg("traces.native")
	msg.Data = []byte("from a NATS client")
	msg.Header.Set(HeaderTraceParent, parent)
	msg.Header.Set(HeaderTraceState, state)
	_, err = js.PublishMsg(ctx(t), msg)
	require.NoError(t, err)
	m := recv(t, got, waitFor)
	assert.Equal(t, parent, m.Metadata[HeaderTraceParent])
	assert.Equal(t, state, m.Metadata[HeaderTraceState])
}
