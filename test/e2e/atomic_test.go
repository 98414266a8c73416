//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestAtomicBulkPublish: with bulkPublishAtomic in daprd's bulk publish
// request, one entry that JetStream refuses (its expectation does not hold)
// fails the whole bulk, and nothing of it is stored or delivered. The same
// bulk without that entry is stored whole and reaches the app.
func TestAtomicBulkPublish(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("atomic")
		prefix := tag(t)

		var entries []bulkEntry
		for i := range 9 {
			entries = append(entries, bulkEntry{
				EntryID: fmt.Sprintf("e%d", i), ContentType: "application/json",
				Event: stack.TweetData{ID: fmt.Sprintf("a%d", i), Text: fmt.Sprintf("%s atomic %d", prefix, i)},
			})
		}
		refused := bulkEntry{
			EntryID: "stale", ContentType: "application/json",
			Event:    stack.TweetData{ID: "stale", Text: prefix + " stale"},
			Metadata: map[string]string{"expectedLastSubjectSequence": "999"},
		}
		withRefused := append(append([]bulkEntry{}, entries[:5]...), append([]bulkEntry{refused}, entries[5:]...)...)

		stored := func() uint64 {
			st, err := e.js.Stream(e.ctx, stack.Stream)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(e.ctx, jetstream.WithSubjectFilter(stack.TopicBulk))
			if err != nil {
				t.Fatal(err)
			}
			return info.State.Subjects[stack.TopicBulk]
		}

		status, body, err := stack.Do(e.ctx, http.MethodPost, n.AppURL("/bulk/"+stack.TopicBulk+"?metadata.bulkPublishAtomic=true"), withRefused)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the atomic bulk with a refused entry answered %d: %s", status, body)
		if status != http.StatusInternalServerError {
			t.Errorf("answered %d, want 500", status)
		}
		var resp bulkResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatalf("bulk publish response %q: %v", body, err)
		}
		if len(resp.FailedEntries) != len(withRefused) {
			t.Errorf("daprd lists %d failed entries, want all %d", len(resp.FailedEntries), len(withRefused))
		}
		for _, f := range resp.FailedEntries {
			if !strings.Contains(f.Error, "expectedLastSubjectSequence") || !strings.Contains(f.Error, "nothing was stored") {
				t.Errorf("entry %s's error does not say why nothing was stored: %s", f.EntryID, f.Error)
			}
		}
		if got := stored(); got != 0 {
			t.Fatalf("the stream holds %d messages of the refused atomic bulk, want none", got)
		}

		status, body, err = stack.Do(e.ctx, http.MethodPost, n.AppURL("/bulk/"+stack.TopicBulk+"?metadata.bulkPublishAtomic=true"), entries)
		if err != nil {
			t.Fatal(err)
		}
		if status/100 != 2 {
			t.Fatalf("the atomic bulk of valid entries answered %d: %s", status, body)
		}
		if got := stored(); got != uint64(len(entries)) {
			t.Errorf("the stream holds %d messages, want the %d entries", got, len(entries))
		}

		mine := func(r stack.Record) bool { return strings.HasPrefix(r.Tweet().Text, prefix) }
		waitUntil(t, 60*time.Second, func() string {
			if got := filter(received(t, n).Events, stack.TopicBulk, mine); len(got) < len(entries) {
				return fmt.Sprintf("the app received %d of %d entries", len(got), len(entries))
			}
			return ""
		})
		for _, r := range filter(received(t, n).Events, stack.TopicBulk, mine) {
			if r.Tweet().Text == refused.Event.(stack.TweetData).Text {
				t.Errorf("the refused entry reached the app")
			}
		}
	})
}
