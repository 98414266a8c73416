//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestExpectedLastSubjectSequence: optimistic concurrency through daprd's
// HTTP publish API. The first tweet expects nothing on its topic yet and is
// stored; a second with the same expectation is refused with an error that
// names the key and what the stream holds, is not stored and never reaches
// the app. A tweet that expects the sequence now there is stored.
func TestExpectedLastSubjectSequence(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("ledger")
		prefix := tag(t)

		if _, err := n.Tweet(e.ctx, prefix+" first", "", "metadata.expectedLastSubjectSequence=0"); err != nil {
			t.Fatalf("the first tweet, expecting nothing on the topic: %v", err)
		}
		_, err := n.Tweet(e.ctx, prefix+" conflicting", "", "metadata.expectedLastSubjectSequence=0")
		if err == nil {
			t.Fatal("a tweet expecting an empty topic was stored after the first")
		}
		for _, want := range []string{"expectedLastSubjectSequence", "sequence 1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the refusal does not say %q: %v", want, err)
			}
		}
		t.Logf("refused: %v", err)
		if _, err := n.Tweet(e.ctx, prefix+" second", "", "metadata.expectedLastSubjectSequence=1"); err != nil {
			t.Fatalf("a tweet expecting the sequence that is there: %v", err)
		}

		mine := func(r stack.Record) bool { return strings.HasPrefix(r.Tweet().Text, prefix) }
		waitUntil(t, 30*time.Second, func() string {
			if got := filter(received(t, n).Events, stack.TopicCreated, mine); len(got) < 2 {
				return fmt.Sprintf("the app received %d of the 2 stored tweets", len(got))
			}
			return ""
		})
		time.Sleep(time.Second) // a refused tweet that was stored after all would show up now
		for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
			if strings.Contains(r.Tweet().Text, "conflicting") {
				t.Errorf("the refused tweet reached the app")
			}
		}
	})
}
