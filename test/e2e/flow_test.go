//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestTweetsAndLikes: tweets and likes go app → daprd → component →
// JetStream → component → daprd → app, each exactly once, as CloudEvents
// whose data is what the app published.
func TestTweetsAndLikes(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("tweets")
		prefix := tag(t)

		const count = 5
		want := map[string]stack.TweetData{} // by tweet id
		var likes []string
		for i := range count {
			text := fmt.Sprintf("%s tweet %d", prefix, i)
			id, err := n.Tweet(e.ctx, text, "", "")
			if err != nil {
				t.Fatal(err)
			}
			want[id] = stack.TweetData{ID: id, Text: text}
			if err := n.Like(e.ctx, id, ""); err != nil {
				t.Fatal(err)
			}
			likes = append(likes, id)
		}

		mine := func(r stack.Record) bool { _, ok := want[r.Tweet().ID]; return ok }
		var created, liked []stack.Record
		check := func() string {
			rec := received(t, n).Events
			created = filter(rec, stack.TopicCreated, mine)
			liked = filter(rec, stack.TopicLiked, mine)
			if len(created) < count || len(liked) < count {
				return fmt.Sprintf("received %d of %d tweets and %d of %d likes", len(created), count, len(liked), count)
			}
			return ""
		}
		waitUntil(t, 30*time.Second, check)
		// Anything delivered twice would show up within this quiet period:
		// every handler answered SUCCESS, so nothing is redelivered.
		time.Sleep(2 * time.Second)
		check()

		if len(created) != count || len(liked) != count {
			t.Fatalf("got %d tweets and %d likes, want exactly %d of each", len(created), len(liked), count)
		}
		seen := map[string]bool{}
		for _, r := range created {
			got := r.Tweet()
			if got != want[got.ID] {
				t.Errorf("tweet data %s, want %+v", r.Data, want[got.ID])
			}
			if seen[got.ID] {
				t.Errorf("tweet %s delivered twice", got.ID)
			}
			seen[got.ID] = true
			assertCloudEvent(t, r, "tweets", stack.TopicCreated)
		}
		likeSeen := map[string]bool{}
		for _, r := range liked {
			got := r.Tweet()
			if got.Text != "" || likeSeen[got.ID] {
				t.Errorf("like %s: unexpected or duplicate", r.Data)
			}
			likeSeen[got.ID] = true
			assertCloudEvent(t, r, "tweets", stack.TopicLiked)
		}
		for _, id := range likes {
			if !likeSeen[id] {
				t.Errorf("like of %s never arrived", id)
			}
		}
	})
}

// assertCloudEvent checks that a record is a CloudEvent daprd made for a
// publish by appID to topic, delivered at the first attempt.
func assertCloudEvent(t *testing.T, r stack.Record, appID, topic string) {
	t.Helper()
	var ce struct {
		SpecVersion     string `json:"specversion"`
		ID              string `json:"id"`
		Source          string `json:"source"`
		Type            string `json:"type"`
		Topic           string `json:"topic"`
		PubsubName      string `json:"pubsubname"`
		DataContentType string `json:"datacontenttype"`
	}
	if err := json.Unmarshal(r.Event, &ce); err != nil {
		t.Errorf("event %s is not JSON: %v", r.Event, err)
		return
	}
	if ce.SpecVersion != "1.0" || ce.ID == "" || ce.Source != appID || ce.Type != "com.dapr.event.sent" ||
		ce.Topic != topic || ce.PubsubName != stack.PubsubName || !strings.HasPrefix(ce.DataContentType, "application/json") {
		t.Errorf("not the CloudEvent expected from %s on %s: %s", appID, topic, r.Event)
	}
	if r.Attempt != 1 {
		t.Errorf("event %s: attempt %d, want 1", ce.ID, r.Attempt)
	}
}
