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
		nodes := startReplicas(t, e, "ordered", 3, opts)
		tw := numbered{t: t, prefix: tag(t)}
		handled := tw.handled
		published := tw.publish(e, total, 20*time.Millisecond)

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
		after := tw.awaitAll(total, deadHandled, survivors)

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
		late, twice := lateAndTwice(after, deadHandled)
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

// TestPinnedRollingUpdateKeepsOrder: two replicas of one app id with
// priorityPolicy pinned, and an app slower than the flow, so that the pinned
// replica's component holds tweets its app has not seen (up to
// maxInFlight). The pinned replica's pod is deleted, as in a rolling update:
// SIGTERM to its daprd and component at once. The other replica takes over
// well before pinnedTTL (30 s) would have ended the pin, and handles the
// rest in stream order, the tweets the stopped replica held first; only the
// one its app was handling may come twice. (Order needs daprd 1.18, which
// hands the app one message at a time.)
func TestPinnedRollingUpdateKeepsOrder(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const (
			total       = 120
			maxInFlight = 10
		)
		e := newEnv(t, v)
		opts := []nodeOpt{withDelay(30 * time.Millisecond), withMetadata(map[string]string{"priorityPolicy": "pinned", "maxInFlight": fmt.Sprint(maxInFlight)})}
		nodes := startReplicas(t, e, "rolling", 2, opts...)
		tw := numbered{t: t, prefix: tag(t)}
		published := tw.publish(e, total, 10*time.Millisecond)
		var old, updated *stack.Node
		waitUntil(t, 60*time.Second, func() string {
			for i, n := range nodes {
				if len(tw.handled(n)) >= total/3 {
					old, updated = n, nodes[1-i]
					return ""
				}
			}
			return "no replica has handled a third of the tweets yet"
		})
		if h := tw.handled(updated); len(h) > 0 {
			t.Errorf("the replica that is not pinned handled tweets before the update: %v", h)
		}
		stoppedAt := time.Now()
		terminatePod(t, old, podStop{})
		if err := <-published; err != nil {
			t.Fatal(err)
		}
		oldHandled := tw.handled(old)
		if !slices.IsSorted(oldHandled) && v != "v1.14.0" {
			t.Errorf("the pinned replica handled out of order: %v", oldHandled)
		}
		after := tw.awaitAll(total, oldHandled, []*stack.Node{updated})
		late, twice := lateAndTwice(after, oldHandled)
		serial := v != "v1.14.0"
		if serial && (late > 0 || twice > 1) {
			var order []int
			for _, h := range after {
				order = append(order, h.i)
			}
			t.Errorf("%d late and %d repeated tweets after the update, want none late and at most the one the app was handling twice; the stopped replica handled %v, then the other %v\nthe stopped replica's log:\n%s",
				late, twice, oldHandled, order, old.Logs(60))
		} else if twice > maxInFlight+1 {
			t.Errorf("%d tweets handled twice after the update, want at most %d: what the stopped replica's daprd had", twice, maxInFlight+1)
		}
		gap := after[0].at.Sub(stoppedAt)
		if gap > 10*time.Second {
			t.Errorf("the other replica took over %s after the pinned one stopped: the pin was not given up", gap.Round(100*time.Millisecond))
		}
		t.Logf("daprd %s: the pinned replica handled %d tweets before its pod was deleted; the other took over %s later and handled %d (%d late, %d twice)",
			v, len(oldHandled), gap.Round(10*time.Millisecond), len(after), late, twice)
	})
}

// startReplicas starts n nodes of app appID at once.
func startReplicas(t *testing.T, e *env, appID string, n int, opts ...nodeOpt) []*stack.Node {
	t.Helper()
	nodes := make([]*stack.Node, n)
	for i := range nodes {
		nodes[i] = e.newNode(appID, opts...)
	}
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nodes[i] = e.startNodeAsync(nodes[i]) }()
	}
	wg.Wait()
	if slices.Contains(nodes, nil) {
		t.FailNow()
	}
	return nodes
}

// numbered are a test's tweets "<prefix> <i>", published straight to
// JetStream in order: the stream's order is the order they must be handled
// in.
type numbered struct {
	t      *testing.T
	prefix string
}

// publish publishes tweets 0…total-1, one every pace, and reports the
// outcome once done.
func (w numbered) publish(e *env, total int, pace time.Duration) <-chan error {
	published := make(chan error, 1)
	go func() {
		for i := range total {
			ce := fmt.Sprintf(`{"specversion":"1.0","id":"%s-%d","source":"test","type":"tweet","datacontenttype":"application/json","data":{"id":"%d","text":"%s %d"}}`,
				w.prefix, i, i, w.prefix, i)
			if _, err := e.js.Publish(e.ctx, stack.TopicCreated, []byte(ce)); err != nil {
				published <- err
				return
			}
			time.Sleep(pace)
		}
		published <- nil
	}()
	return published
}

func (w numbered) index(r stack.Record) int {
	var i int
	if _, err := fmt.Sscanf(strings.TrimPrefix(r.Tweet().Text, w.prefix), " %d", &i); err != nil {
		return -1
	}
	return i
}

func (w numbered) mine(r stack.Record) bool { return strings.HasPrefix(r.Tweet().Text, w.prefix+" ") }

// handled lists the tweets n's app handled, in the order it handled them.
func (w numbered) handled(n *stack.Node) []int {
	var out []int
	for _, r := range filter(received(w.t, n).Events, stack.TopicCreated, w.mine) {
		out = append(out, w.index(r))
	}
	return out
}

// handling is a tweet handled, and when.
type handling struct {
	i  int
	at time.Time
}

// awaitAll waits until every one of total tweets was handled, by before or
// by nodes, and returns what nodes handled, in the order they did.
func (w numbered) awaitAll(total int, before []int, nodes []*stack.Node) []handling {
	var after []handling
	waitUntil(w.t, 60*time.Second, func() string {
		after = after[:0]
		seen := map[int]bool{}
		for _, i := range before {
			seen[i] = true
		}
		for _, n := range nodes {
			for _, r := range filter(received(w.t, n).Events, stack.TopicCreated, w.mine) {
				after = append(after, handling{w.index(r), r.Time})
				seen[w.index(r)] = true
			}
		}
		if len(seen) < total {
			return fmt.Sprintf("%d of %d tweets handled", len(seen), total)
		}
		return ""
	})
	sort.Slice(after, func(a, b int) bool { return after[a].at.Before(after[b].at) })
	return after
}

// lateAndTwice counts, of after, the tweets handled after a later one
// (late), and those handled before or earlier in after (twice).
func lateAndTwice(after []handling, before []int) (late, twice int) {
	last := -1
	seen := map[int]bool{}
	for _, i := range before {
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
	return late, twice
}
