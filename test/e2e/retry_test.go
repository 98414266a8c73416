//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestRetriesAndDeadLetter: a handler that answers RETRY, or fails with HTTP
// 500, on the first attempt gets the event again and then succeeds; a handler
// that answers DROP sends the event to the dead-letter topic, where it arrives
// once, and it is not redelivered.
//
// Redelivery is tested on tweet_liked, which has no dead-letter topic: when a
// subscription has one, daprd (1.14 and 1.18 alike, with no resiliency
// policy) publishes every failed event to it and acks the original, so the
// broker never redelivers. Without one, daprd NAKs the message and the
// component has JetStream redeliver it.
func TestRetriesAndDeadLetter(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("retries")
		prefix := tag(t)

		// Likes carry the tweet id they like; each gets its own tweet so that
		// the records can be told apart.
		ids := map[string]string{} // behaviour -> id of the liked tweet
		for _, b := range []string{"retry-once", "fail-once", "ok"} {
			id, err := n.Tweet(e.ctx, prefix+" for "+b, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Like(e.ctx, id, b); err != nil {
				t.Fatal(err)
			}
			ids[b] = id
		}
		dropID, err := n.Tweet(e.ctx, prefix+" drop me", "drop", "")
		if err != nil {
			t.Fatal(err)
		}

		byID := func(id string) func(stack.Record) bool {
			return func(r stack.Record) bool { return r.Tweet().ID == id }
		}
		var rec []stack.Record
		waitUntil(t, 30*time.Second, func() string {
			rec = received(t, n).Events
			for _, b := range []string{"retry-once", "fail-once"} {
				if got := filter(rec, stack.TopicLiked, byID(ids[b])); len(got) < 2 {
					return fmt.Sprintf("%s like: %d deliveries so far, want 2", b, len(got))
				}
			}
			if got := filter(rec, stack.TopicDeadLetter, byID(dropID)); len(got) < 1 {
				return "the dropped tweet has not arrived on the dead-letter topic"
			}
			return ""
		})
		time.Sleep(2 * time.Second) // let any extra delivery show up
		rec = received(t, n).Events

		for b, first := range map[string]string{"retry-once": "RETRY", "fail-once": "HTTP500"} {
			got := filter(rec, stack.TopicLiked, byID(ids[b]))
			if len(got) != 2 {
				t.Errorf("%s like: %d deliveries, want 2: %+v", b, len(got), got)
				continue
			}
			if got[0].ID != got[1].ID || got[0].Attempt != 1 || got[1].Attempt != 2 || got[0].Status != first || got[1].Status != "SUCCESS" {
				t.Errorf("%s like: want the same event answered %s then SUCCESS, got %+v", b, first, got)
			}
		}
		if got := filter(rec, stack.TopicLiked, byID(ids["ok"])); len(got) != 1 || got[0].Status != "SUCCESS" {
			t.Errorf("plain like: %+v, want one SUCCESS", got)
		}

		// The dropped tweet: delivered once on tweet_created, answered DROP,
		// and delivered once on the dead-letter topic, with the same CloudEvent.
		orig := filter(rec, stack.TopicCreated, byID(dropID))
		if len(orig) != 1 || orig[0].Status != "DROP" {
			t.Errorf("dropped tweet on %s: %+v, want one delivery answered DROP", stack.TopicCreated, orig)
		}
		dl := filter(rec, stack.TopicDeadLetter, byID(dropID))
		if len(dl) != 1 {
			t.Fatalf("dropped tweet on the dead-letter topic: %d deliveries, want 1: %+v", len(dl), dl)
		}
		if len(orig) == 1 && (dl[0].ID != orig[0].ID || string(dl[0].Data) != string(orig[0].Data)) {
			t.Errorf("dead letter %s %s differs from the original %s %s", dl[0].ID, dl[0].Data, orig[0].ID, orig[0].Data)
		}
		// The dead-letter topic is covered by the stream (auto-provisioning
		// made the stream with TWITTERCLONE.>), and holds exactly this event.
		info, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}
		si, err := info.Info(e.ctx, jetstream.WithSubjectFilter(stack.TopicDeadLetter))
		if err != nil {
			t.Fatal(err)
		}
		if c := si.State.Subjects[stack.TopicDeadLetter]; c != 1 {
			t.Errorf("stream %s holds %d messages on %s, want 1", stack.Stream, c, stack.TopicDeadLetter)
		}
	})
}
