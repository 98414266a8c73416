//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestPinnedOrderAcrossReplicas: three replicas of one app id with
// priorityPolicy pinned. One replica receives the topic at a time, in stream
// order. It is killed (component, daprd and app, as a pod dies) while tweets
// keep coming; another replica takes over, and every tweet is handled, once
// and in order, apart from the redelivery of what the dead one held. (Order
// needs daprd 1.18, which hands the app one message at a time.)
func TestPinnedOrderAcrossReplicas(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const (
			total       = 150
			maxInFlight = 10
			ackWait     = 4 * time.Second
		)
		e := newEnv(t, v)
		opts := withMetadata(map[string]string{
			"priorityPolicy": "pinned", "pinnedTTL": "3s", "ackWait": ackWait.String(), "maxInFlight": fmt.Sprint(maxInFlight),
		})
		nodes := []*stack.Node{e.newNode("ordered", opts), e.newNode("ordered", opts), e.newNode("ordered", opts)}
		var wg sync.WaitGroup
		for i := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); nodes[i] = e.startNodeAsync(nodes[i]) }()
		}
		wg.Wait()
		if slices.Contains(nodes, nil) {
			t.FailNow()
		}
		prefix := tag(t)
		index := func(r stack.Record) int {
			var i int
			if _, err := fmt.Sscanf(strings.TrimPrefix(r.Tweet().Text, prefix), " %d", &i); err != nil {
				return -1
			}
			return i
		}
		mine := func(r stack.Record) bool { return strings.HasPrefix(r.Tweet().Text, prefix+" ") }
		handled := func(n *stack.Node) []int {
			var out []int
			for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
				out = append(out, index(r))
			}
			return out
		}

		// Tweets are published in a steady stream, in order, straight to
		// JetStream; the stream's order is the order they must be handled in.
		published := make(chan error, 1)
		go func() {
			for i := range total {
				ce := fmt.Sprintf(`{"specversion":"1.0","id":"%s-%d","source":"test","type":"tweet","datacontenttype":"application/json","data":{"id":"%d","text":"%s %d"}}`,
					prefix, i, i, prefix, i)
				if _, err := e.js.Publish(e.ctx, stack.TopicCreated, []byte(ce)); err != nil {
					published <- err
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			published <- nil
		}()

		// Kill the pinned replica once it has handled a third of them.
		var dead *stack.Node
		var deadHandled []int
		waitUntil(t, 60*time.Second, func() string {
			for _, n := range nodes {
				if h := handled(n); len(h) >= total/3 {
					dead, deadHandled = n, h
					return ""
				}
			}
			return "no replica has handled a third of the tweets yet"
		})
		for _, n := range nodes {
			if n != dead && len(handled(n)) > 0 {
				t.Errorf("a replica that is not pinned handled tweets before the kill: %v", handled(n))
			}
		}
		// Freeze its daprd first, so that what its app handled is known
		// exactly: nothing more reaches the app, and what the frozen daprd
		// holds dies with it and is redelivered.
		if err := dead.Daprd.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, func() string {
			before := len(handled(dead))
			time.Sleep(200 * time.Millisecond)
			if deadHandled = handled(dead); len(deadHandled) != before {
				return "the app of the frozen replica is still handling tweets"
			}
			return ""
		})
		dead.App.Kill()
		dead.Daprd.Kill()
		dead.Component.Kill()
		killedAt := time.Now()
		if err := <-published; err != nil {
			t.Fatal(err)
		}

		var survivors []*stack.Node
		for _, n := range nodes {
			if n != dead {
				survivors = append(survivors, n)
			}
		}
		type handling struct {
			i  int
			at time.Time
		}
		var after []handling
		waitUntil(t, 60*time.Second, func() string {
			after = after[:0]
			seen := map[int]bool{}
			for _, i := range deadHandled {
				seen[i] = true
			}
			for _, n := range survivors {
				for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
					after = append(after, handling{index(r), r.Time})
					seen[index(r)] = true
				}
			}
			if len(seen) < total {
				return fmt.Sprintf("%d of %d tweets handled", len(seen), total)
			}
			return ""
		})
		sort.Slice(after, func(a, b int) bool { return after[a].at.Before(after[b].at) })

		// The dead replica handled its share in order.
		if !slices.IsSorted(deadHandled) {
			t.Errorf("the pinned replica handled out of order: %v", deadHandled)
		}
		// One survivor took over, and nobody else handled anything.
		busy := 0
		for _, n := range survivors {
			if len(handled(n)) > 0 {
				busy++
			}
		}
		if busy != 1 {
			t.Errorf("%d surviving replicas handled tweets, want the one that took over", busy)
		}
		// After the takeover, tweets come in order; the only exceptions are
		// redeliveries of what the dead replica held (at most its window,
		// and what it handled after the snapshot above), which come late.
		last, late, twice := -1, 0, 0
		seen := map[int]bool{}
		for _, i := range deadHandled {
			seen[i] = true
		}
		for _, h := range after {
			switch {
			case seen[h.i]:
				twice++
			case h.i < last:
				late++
			default:
				last = h.i
			}
			seen[h.i] = true
		}
		// daprd 1.14 hands a subscription's messages to the app concurrently,
		// so the order in which the app sees a backlog is not the stream's;
		// daprd 1.18 hands them over one at a time.
		if serial := v != "v1.14.0"; serial && late+twice > 2*maxInFlight {
			t.Errorf("%d late and %d repeated tweets after the takeover, want at most %d: what the dead replica held", late, twice, 2*maxInFlight)
		} else if twice > 2*maxInFlight {
			t.Errorf("%d tweets handled twice after the takeover, want at most %d: what the dead replica held", twice, 2*maxInFlight)
		}
		gap := time.Duration(0)
		if len(after) > 0 {
			gap = after[0].at.Sub(killedAt)
		}
		t.Logf("daprd %s: the pinned replica handled %d tweets before it was killed; another took over %s later and handled %d (%d redelivered late, %d twice)",
			v, len(deadHandled), gap.Round(100*time.Millisecond), len(after), late, twice)
	})
}
