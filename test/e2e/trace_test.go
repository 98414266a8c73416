//go:build e2e

package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestTraceContextAcrossNATS: a native nats.go publisher's W3C
// traceparent header reaches daprd as delivery metadata, and daprd continues
// that trace: the app's request carries the same trace id.
func TestTraceContextAcrossNATS(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("tracer")
		const traceID = "0af7651916cd43dd8448eb211c80319c"
		msg := nats.NewMsg(stack.TopicRaw)
		msg.Data = []byte(tag(t) + " traced")
		msg.Header.Set("traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
		if _, err := e.js.PublishMsg(e.ctx, msg); err != nil {
			t.Fatal(err)
		}
		var got stack.Record
		waitUntil(t, 30*time.Second, func() string {
			for _, r := range filter(received(t, n).Events, stack.TopicRaw, func(stack.Record) bool { return true }) {
				if strings.Contains(string(r.Data), " traced") {
					got = r
					return ""
				}
			}
			return "the app has not received the traced message"
		})
		if !strings.Contains(got.TraceParent, traceID) {
			t.Errorf("the app's request has traceparent %q, want trace id %s", got.TraceParent, traceID)
		}
		t.Logf("daprd %s sent the app traceparent %q", v, got.TraceParent)

		// The other way: a publish through daprd within a trace is stored
		// with that trace's traceparent header, for native NATS consumers.
		const publishTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		req, err := http.NewRequestWithContext(e.ctx, http.MethodPost, n.DaprdURL("/v1.0/publish/"+stack.PubsubName+"/"+stack.TopicLiked),
			strings.NewReader(`{"id":"traced-like"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("traceparent", "00-"+publishTrace+"-00f067aa0ba902b7-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("publish: %s", resp.Status)
		}
		st, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := st.GetLastMsgForSubject(e.ctx, stack.TopicLiked)
		if err != nil {
			t.Fatal(err)
		}
		if h := stored.Header.Get("traceparent"); !strings.Contains(h, publishTrace) {
			t.Errorf("the stored message has traceparent header %q, want trace id %s (headers %v)", h, publishTrace, stored.Header)
		}
		t.Logf("daprd %s published with traceparent header %q", v, stored.Header.Get("traceparent"))
	})
}
