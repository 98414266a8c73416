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
// HTTP publish API. Two writers race to append the topic's first tweet, each
// expecting nothing on it yet: exactly one is stored, and the other is
// refused with an error that names the key and what the stream holds, and
// never reaches the app. A tweet that expects the sequence now there is
// stored.
func TestExpectedLastSubjectSequence(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("ledger")
		prefix := tag(t)

		// Two writers race to append the first event of the topic.
		errs := make(chan error, 2)
		for _, who := range []string{"writer A", "writer B"} {
			go func() {
				_, err := n.Tweet(e.ctx, prefix+" first by "+who, "", "metadata.expectedLastSubjectSequence=0")
				errs <- err
			}()
		}
		var lost []error
		for range 2 {
			if err := <-errs; err != nil {
				lost = append(lost, err)
			}
		}
		if len(lost) != 1 {
			t.Fatalf("%d of 2 racing writers failed, want exactly 1: %v", len(lost), lost)
		}
		err := lost[0]
		for _, want := range []string{"expectedLastSubjectSequence", "sequence 1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the refusal does not say %q: %v", want, err)
			}
		}
		t.Logf("the writer that lost saw: %v", err)
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
		firsts := 0
		for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
			if strings.Contains(r.Tweet().Text, "first by") {
				firsts++
			}
		}
		if firsts != 1 {
			t.Errorf("the app received %d first tweets, want only the winner's", firsts)
		}
	})
}
