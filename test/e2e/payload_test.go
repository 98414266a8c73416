//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestMessageTTL: ttlInSeconds on a publish becomes a per-message TTL in
// JetStream: the stream holds the message, then drops it once the TTL has
// passed, while a message without TTL stays.
func TestMessageTTL(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("ttl")
		prefix := tag(t)
		const (
			ttlTopic     = "TWITTERCLONE.ttl_expiring" // no subscription
			controlTopic = "TWITTERCLONE.ttl_control"  // no subscription
		)
		publish := func(topic, query, text string) {
			t.Helper()
			u := n.DaprdURL("/v1.0/publish/" + stack.PubsubName + "/" + topic)
			if query != "" {
				u += "?" + query
			}
			status, body, err := stack.Do(e.ctx, http.MethodPost, u, map[string]string{"text": text})
			if err != nil || status != http.StatusNoContent {
				t.Fatalf("publish to %s: %d %s %v", topic, status, body, err)
			}
		}
		st, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}

		publish(ttlTopic, "metadata.ttlInSeconds=1", prefix+" expiring")
		published := time.Now()
		publish(controlTopic, "", prefix+" control")
		// Also through the app, which passes the query on to daprd: a tweet
		// that the subscription may or may not get before it expires.
		if _, err := n.Tweet(e.ctx, prefix+" expiring tweet", "", "metadata.ttlInSeconds=1"); err != nil {
			t.Fatal(err)
		}

		// Stored, with JetStream's per-message TTL header.
		m, err := st.GetLastMsgForSubject(e.ctx, ttlTopic)
		switch {
		case err == nil:
			if got := m.Header.Get(jetstream.MsgTTLHeader); got != "1s" {
				t.Errorf("stored message has %s %q, want 1s", jetstream.MsgTTLHeader, got)
			}
		case time.Since(published) < 900*time.Millisecond:
			t.Fatalf("the message with ttlInSeconds=1 was not stored: %v", err)
		default:
			t.Logf("could not look at the message before it expired (%s after publishing): %v", time.Since(published), err)
		}

		// Gone after its TTL; the control message stays.
		waitUntil(t, 13*time.Second, func() string {
			for _, topic := range []string{ttlTopic, stack.TopicCreated} {
				_, err := st.GetLastMsgForSubject(e.ctx, topic)
				if !errors.Is(err, jetstream.ErrMsgNotFound) {
					return fmt.Sprintf("the stream still holds the message on %s after its 1s TTL (%v)", topic, err)
				}
			}
			return ""
		})
		if _, err := st.GetLastMsgForSubject(context.Background(), controlTopic); err != nil {
			t.Errorf("the message without TTL is gone: %v", err)
		}
		info, err := st.Info(e.ctx, jetstream.WithSubjectFilter(stack.Stream+".>"))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.State.Subjects; got[ttlTopic] != 0 || got[stack.TopicCreated] != 0 || got[controlTopic] != 1 || info.State.LastSeq < 3 {
			t.Errorf("stream state %+v: want 3 messages stored, only the one without TTL left", info.State)
		}
	})
}

// TestRawPayload: a subscription with rawPayload "true" gets the bare message
// (daprd hands it to the app base64-encoded in a CloudEvent envelope it
// makes, not the publisher's CloudEvent), both for a Dapr publish with
// rawPayload and for a message from a plain NATS publisher.
func TestRawPayload(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("raw")
		prefix := tag(t)

		bare := fmt.Sprintf(`{"greeting":%q}`, prefix+" from dapr")
		u := n.DaprdURL("/v1.0/publish/" + stack.PubsubName + "/" + stack.TopicRaw + "?metadata.rawPayload=true")
		status, body, err := stack.Do(e.ctx, http.MethodPost, u, []byte(bare))
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("raw publish: %d %s %v", status, body, err)
		}
		st, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}
		m, err := st.GetLastMsgForSubject(e.ctx, stack.TopicRaw)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != bare {
			t.Errorf("JetStream stored %s, want the bare payload %s", m.Data, bare)
		}
		plain := prefix + " from a plain NATS publisher"
		if _, err := e.js.Publish(e.ctx, stack.TopicRaw, []byte(plain)); err != nil {
			t.Fatal(err)
		}

		var got []stack.Record
		waitUntil(t, 30*time.Second, func() string {
			got = filter(received(t, n).Events, stack.TopicRaw, func(stack.Record) bool { return true })
			if len(got) < 2 {
				return fmt.Sprintf("the raw subscription got %d of 2 messages", len(got))
			}
			return ""
		})
		time.Sleep(time.Second) // a window for a third message to show, not a wait
		got = filter(received(t, n).Events, stack.TopicRaw, func(stack.Record) bool { return true })
		if len(got) != 2 {
			t.Fatalf("the raw subscription got %d messages, want 2: %+v", len(got), got)
		}
		// daprd 1.14 handles messages concurrently, so the order may vary.
		want := map[string]bool{bare: true, fmt.Sprintf("%q", plain): true}
		for _, r := range got {
			if !r.Raw {
				t.Errorf("a message reached the app as a CloudEvent with data, not as a raw payload: %s", r.Event)
			}
			if !want[string(r.Data)] {
				t.Errorf("the app got %s, want one of %v", r.Data, keys(want))
			}
			delete(want, string(r.Data))
		}
	})
}
