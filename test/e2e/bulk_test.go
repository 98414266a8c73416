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

// bulkEntry is an entry of daprd's bulk publish API.
type bulkEntry struct {
	EntryID     string            `json:"entryId"`
	Event       any               `json:"event"`
	ContentType string            `json:"contentType"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// bulkResponse is the body of daprd's answer to a bulk publish that failed.
type bulkResponse struct {
	FailedEntries []struct {
		EntryID string `json:"entryId"`
		Error   string `json:"error"`
	} `json:"failedEntries"`
}

// TestBulkPublishAndSubscribe: daprd's bulk publish API reaches the
// component's BulkPublish; every valid entry is stored, and an entry that
// cannot become a NATS message (its metadata key has a space, which no NATS
// header name can have) is reported by daprd as failed. The bulk
// subscription delivers the entries to the app in batches.
func TestBulkPublishAndSubscribe(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("bulk")
		prefix := tag(t)

		const count = 20
		var entries []bulkEntry
		texts := map[string]bool{}
		for i := range count {
			text := fmt.Sprintf("%s bulk %d", prefix, i)
			texts[text] = true
			entries = append(entries, bulkEntry{
				EntryID: fmt.Sprintf("e%d", i), ContentType: "application/json",
				Event: stack.TweetData{ID: fmt.Sprintf("b%d", i), Text: text},
			})
		}
		badText := prefix + " bad entry"
		entries = append(entries, bulkEntry{
			EntryID: "bad", ContentType: "application/json",
			Event:    stack.TweetData{ID: "bad", Text: badText},
			Metadata: map[string]string{"not a header": "x"},
		})

		status, body, err := stack.Do(e.ctx, http.MethodPost, n.AppURL("/bulk/"+stack.TopicBulk), entries)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("bulk publish answered %d: %s", status, body)
		var resp bulkResponse
		if len(body) > 0 {
			if err := json.Unmarshal(body, &resp); err != nil {
				t.Fatalf("bulk publish response %q: %v", body, err)
			}
		}
		failed := map[string]string{}
		for _, f := range resp.FailedEntries {
			failed[f.EntryID] = f.Error
		}
		// The component fails the call when an entry fails: daprd's pluggable
		// client drops a response's failed entries when the call succeeds,
		// and its HTTP API then answers 204. With an error, daprd answers 500
		// and lists every entry of the request as failed, each with the
		// component's error, which names the entry that really failed.
		if status != http.StatusInternalServerError {
			t.Errorf("bulk publish answered %d, want 500: entry \"bad\" cannot be published", status)
		}
		if msg, ok := failed["bad"]; !ok {
			t.Errorf("daprd does not list entry \"bad\" as failed: %d %s", status, body)
		} else if !strings.Contains(msg, `entry "bad"`) || !strings.Contains(msg, "NATS header") {
			t.Errorf("the error of entry \"bad\" does not say why: %s", msg)
		}

		// Every valid entry is in the stream, the bad one is not.
		st, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(e.ctx, jetstream.WithSubjectFilter(stack.TopicBulk))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.State.Subjects[stack.TopicBulk]; got != count {
			t.Errorf("stream holds %d messages on %s, want the %d valid entries", got, stack.TopicBulk, count)
		}

		// The bulk subscription gets each valid entry once, in batches.
		mine := func(r stack.Record) bool { return texts[r.Tweet().Text] || r.Tweet().Text == badText }
		var got []stack.Record
		var batches []int
		check := func() string {
			r := received(t, n)
			got, batches = filter(r.Events, stack.TopicBulk, mine), r.Batches
			if len(got) < count {
				return fmt.Sprintf("the bulk subscription got %d of %d entries", len(got), count)
			}
			return ""
		}
		waitUntil(t, 60*time.Second, check)
		time.Sleep(2 * time.Second) // a window for duplicates to show, not a wait
		check()
		t.Logf("batch sizes: %v", batches)
		seen := map[string]bool{}
		for _, r := range got {
			text := r.Tweet().Text
			if !texts[text] || seen[text] {
				t.Errorf("unexpected or duplicate bulk delivery %s", r.Data)
			}
			seen[text] = true
			if r.BatchSize < 1 {
				t.Errorf("entry %s was not delivered through the bulk route", r.Data)
			}
		}
		if len(seen) != count {
			t.Errorf("bulk subscription delivered %d distinct entries, want %d", len(seen), count)
		}
		biggest := 0
		for _, b := range batches {
			biggest = max(biggest, b)
		}
		if biggest > 10 {
			t.Errorf("a batch of %d exceeds maxMessagesCount 10", biggest)
		}
		// A pluggable component cannot implement BulkSubscribe (the protocol
		// has only PullMessages), so daprd batches with its default bulk
		// subscriber, which waits for each message's batch to be handled
		// before the message's handler returns. daprd 1.14's pluggable client
		// runs a handler per message concurrently, so batches form. daprd
		// 1.18's runs one handler at a time (it handles a message before it
		// receives the next), so each batch holds one message, flushed after
		// maxAwaitDurationMs.
		if v == "v1.14.0" && biggest < 2 {
			t.Errorf("every batch had one entry (%v): bulk subscribe did not batch", batches)
		}
		if v == "v1.18.1" && biggest != 1 {
			t.Logf("daprd 1.18 delivered a batch of %d: its pluggable client now handles messages concurrently", biggest)
		}
	})
}
