//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestReplicasShareWork: two instances of one app id (each its own component
// process, daprd and app, like two pods) share the durable consumer: every
// tweet is handled once overall, and both instances get some. An app with
// another id has its own durable and gets every tweet.
func TestReplicasShareWork(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		// Prepared here (newNode may fail the test), started concurrently.
		a, b, other := e.newNode("feed"), e.newNode("feed"), e.newNode("search")
		var wg sync.WaitGroup
		for _, n := range []**stack.Node{&a, &b, &other} {
			wg.Add(1)
			go func() { defer wg.Done(); *n = e.startNodeAsync(*n) }()
		}
		wg.Wait()
		if a == nil || b == nil || other == nil {
			t.FailNow()
		}
		prefix := tag(t)

		const count = 40
		texts := map[string]bool{}
		for i := range count {
			text := fmt.Sprintf("%s tweet %d", prefix, i)
			texts[text] = true
			// Publish through both instances, as a load balancer would.
			via := a
			if i%2 == 1 {
				via = b
			}
			if _, err := via.Tweet(e.ctx, text, "", ""); err != nil {
				t.Fatal(err)
			}
		}

		mine := func(r stack.Record) bool { return texts[r.Tweet().Text] }
		var gotA, gotB, gotOther []stack.Record
		check := func() string {
			gotA = filter(received(t, a).Events, stack.TopicCreated, mine)
			gotB = filter(received(t, b).Events, stack.TopicCreated, mine)
			gotOther = filter(received(t, other).Events, stack.TopicCreated, mine)
			if len(gotA)+len(gotB) < count || len(gotOther) < count {
				return fmt.Sprintf("feed instances got %d+%d, search got %d, of %d", len(gotA), len(gotB), len(gotOther), count)
			}
			return ""
		}
		waitUntil(t, 30*time.Second, check)
		time.Sleep(2 * time.Second) // a window for duplicates to show, not a wait
		check()

		t.Logf("feed instance A handled %d, instance B %d; search %d", len(gotA), len(gotB), len(gotOther))
		seen := map[string]string{}
		for name, recs := range map[string][]stack.Record{"A": gotA, "B": gotB} {
			for _, r := range recs {
				text := r.Tweet().Text
				if prev, dup := seen[text]; dup {
					t.Errorf("%q handled twice by the feed app (instances %s and %s)", text, prev, name)
				}
				seen[text] = name
			}
		}
		if len(seen) != count {
			t.Errorf("the feed app handled %d distinct tweets, want %d", len(seen), count)
		}
		if len(gotA) == 0 || len(gotB) == 0 {
			t.Errorf("one feed instance got nothing (A %d, B %d): the replicas do not share the durable", len(gotA), len(gotB))
		}
		otherSeen := map[string]bool{}
		for _, r := range gotOther {
			text := r.Tweet().Text
			if otherSeen[text] {
				t.Errorf("%q handled twice by the search app", text)
			}
			otherSeen[text] = true
		}
		if len(otherSeen) != count {
			t.Errorf("the search app handled %d distinct tweets, want all %d", len(otherSeen), count)
		}
		// One durable per app id and topic, shared by the replicas.
		names := map[string]bool{}
		st, err := e.js.Stream(e.ctx, stack.Stream)
		if err != nil {
			t.Fatal(err)
		}
		lister := st.ListConsumers(e.ctx)
		for info := range lister.Info() {
			if info.Config.FilterSubject == stack.TopicCreated {
				names[info.Name] = true
			}
		}
		if err := lister.Err(); err != nil {
			t.Fatal(err)
		}
		want := []string{stack.ConsumerName("feed", stack.TopicCreated), stack.ConsumerName("search", stack.TopicCreated)}
		if len(names) != 2 || !names[want[0]] || !names[want[1]] {
			t.Errorf("consumers on %s: %v, want %s", stack.TopicCreated, keys(names), strings.Join(want, ", "))
		}
	})
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
