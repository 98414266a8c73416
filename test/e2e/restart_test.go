//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// poster posts tweets through the app without pause until stopped, and
// remembers which posts succeeded (daprd answered the publish) and when.
type poster struct {
	n      *stack.Node
	prefix string
	stop   chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	ok      map[string]time.Time // text -> when the publish was acknowledged
	failed  int
	lastErr error
}

func startPoster(n *stack.Node, prefix string) *poster {
	p := &poster{n: n, prefix: prefix, stop: make(chan struct{}), done: make(chan struct{}), ok: map[string]time.Time{}}
	go func() {
		defer close(p.done)
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			text := fmt.Sprintf("%s #%d", p.prefix, i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := p.n.Tweet(ctx, text, "", "")
			cancel()
			p.mu.Lock()
			if err == nil {
				p.ok[text] = time.Now()
			} else {
				p.failed++
				p.lastErr = err
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// count is the number of successful posts so far.
func (p *poster) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ok)
}

// waitFor waits until n more posts succeeded.
func (p *poster) waitMore(t *testing.T, n int) {
	t.Helper()
	target := p.count() + n
	waitUntil(t, 60*time.Second, func() string {
		if c := p.count(); c < target {
			p.mu.Lock()
			defer p.mu.Unlock()
			return fmt.Sprintf("%d of %d posts succeeded; %d failed, last error: %v", c, target, p.failed, p.lastErr)
		}
		return ""
	})
}

func (p *poster) finish() (map[string]time.Time, int) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok, p.failed
}

// checkResumed waits until every successful post reached the app, and checks
// that the durable resumed where it was: what the app had handled well before
// the restart (stoppedAt) is not delivered again, and the consumer is the
// one that existed before.
func checkResumed(t *testing.T, e *env, n *stack.Node, posted map[string]time.Time, stoppedAt time.Time, before *jetstream.ConsumerInfo) {
	t.Helper()
	var recs []stack.Record
	waitUntil(t, 60*time.Second, func() string {
		recs = filter(received(t, n).Events, stack.TopicCreated, func(r stack.Record) bool { _, ok := posted[r.Tweet().Text]; return ok })
		seen := map[string]bool{}
		for _, r := range recs {
			seen[r.Tweet().Text] = true
		}
		if len(seen) < len(posted) {
			var missing []string
			for text := range posted {
				if !seen[text] {
					missing = append(missing, text)
				}
			}
			if len(missing) > 5 {
				missing = append(missing[:5], "...")
			}
			return fmt.Sprintf("%d of %d published tweets arrived; missing %s", len(seen), len(posted), strings.Join(missing, ", "))
		}
		return ""
	})
	time.Sleep(2 * time.Second) // a window for redeliveries to show, not a wait
	recs = filter(received(t, n).Events, stack.TopicCreated, func(r stack.Record) bool { _, ok := posted[r.Tweet().Text]; return ok })

	first := map[string]time.Time{}
	var again []string
	for _, r := range recs {
		text := r.Tweet().Text
		if t0, dup := first[text]; dup {
			again = append(again, text)
			// Only messages that were in flight when daprd stopped may come
			// again: one the app had handled a second before was acked.
			if t0.Before(stoppedAt.Add(-time.Second)) {
				t.Errorf("%q was handled at %s, %s before daprd stopped, and delivered again at %s", text,
					t0.Format(time.StampMilli), stoppedAt.Sub(t0).Round(time.Millisecond), r.Time.Format(time.StampMilli))
			}
			continue
		}
		first[text] = r.Time
	}
	t.Logf("%d tweets published and delivered; %d delivered again after the restart", len(posted), len(again))
	if len(again) > 10 {
		t.Errorf("%d tweets were delivered again: the durable did not resume where it was", len(again))
	}

	c, err := e.js.Consumer(e.ctx, stack.Stream, stack.ConsumerName(n.AppID, stack.TopicCreated))
	if err != nil {
		t.Fatal(err)
	}
	after := c.CachedInfo()
	if !after.Created.Equal(before.Created) {
		t.Errorf("consumer %s was created again (%s, before %s)", after.Name, after.Created, before.Created)
	}
	if after.NumAckPending != 0 || after.NumPending != 0 {
		t.Errorf("consumer %s still has %d unacknowledged and %d undelivered messages", after.Name, after.NumAckPending, after.NumPending)
	}
}

// waitSettled waits until the app's durable for topic has nothing
// undelivered or unacknowledged.
func waitSettled(t *testing.T, e *env, n *stack.Node, topic string) {
	t.Helper()
	waitUntil(t, 30*time.Second, func() string {
		if ci := consumerInfo(t, e, n.AppID, topic); ci.NumAckPending != 0 || ci.NumPending != 0 {
			return fmt.Sprintf("consumer %s: %d unacknowledged, %d undelivered", ci.Name, ci.NumAckPending, ci.NumPending)
		}
		return ""
	})
}

// subscriptionEnded matches the component's log line for the end of daprd's
// subscription to topic (in text logs the quotes come escaped).
func subscriptionEnded(topic string) *regexp.Regexp {
	return regexp.MustCompile(`subscription to topic \\?"` + regexp.QuoteMeta(topic) + `\\?" ended`)
}

func consumerInfo(t *testing.T, e *env, appID, topic string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.js.Consumer(e.ctx, stack.Stream, stack.ConsumerName(appID, topic))
	if err != nil {
		t.Fatal(err)
	}
	return c.CachedInfo()
}

// TestRestartDaprd: daprd restarts while the app publishes without pause.
// Every tweet daprd accepted arrives, and the durable resumes: nothing the
// app handled before is delivered again.
func TestRestartDaprd(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("restart")
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		p := startPoster(n, tag(t))
		p.waitMore(t, 30)

		stoppedAt := time.Now()
		if err := n.StopDaprd(30 * time.Second); err != nil {
			t.Errorf("daprd did not stop cleanly: %v", err)
		}
		// Another producer publishes while daprd is down: the durable keeps
		// these for the app.
		backlog := map[string]time.Time{}
		for i := range 5 {
			text := fmt.Sprintf("%s while down %d", tag(t), i)
			ce := fmt.Sprintf(`{"specversion":"1.0","id":"down-%d","source":"nats","type":"tweet","datacontenttype":"application/json","data":{"id":"down-%d","text":%q}}`, i, i, text)
			if _, err := e.js.Publish(e.ctx, stack.TopicCreated, []byte(ce)); err != nil {
				t.Fatal(err)
			}
			backlog[text] = time.Now()
		}
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("daprd restarted in %s", time.Since(stoppedAt).Round(time.Millisecond))
		p.waitMore(t, 30)
		posted, failed := p.finish()
		t.Logf("%d posts succeeded, %d failed while daprd was down", len(posted), failed)
		for text, at := range backlog {
			posted[text] = at
		}
		checkResumed(t, e, n, posted, stoppedAt, before)
	})
}

// TestRestartComponentAndDaprd: the component and daprd restart together
// (daprd first down, component first up) while the app publishes.
func TestRestartComponentAndDaprd(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("restart2")
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		p := startPoster(n, tag(t))
		p.waitMore(t, 30)

		stoppedAt := time.Now()
		if err := n.StopDaprd(30 * time.Second); err != nil {
			t.Errorf("daprd did not stop cleanly: %v", err)
		}
		if err := n.StopComponent(20 * time.Second); err != nil {
			t.Errorf("the component did not stop cleanly: %v", err)
		}
		if err := n.StartComponent(); err != nil {
			t.Fatal(err)
		}
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("component and daprd restarted in %s", time.Since(stoppedAt).Round(time.Millisecond))
		p.waitMore(t, 30)
		posted, failed := p.finish()
		t.Logf("%d posts succeeded, %d failed while daprd was down", len(posted), failed)
		checkResumed(t, e, n, posted, stoppedAt, before)
	})
}

// TestComponentRestartedUnderDaprd: the component process restarts (its
// container was killed for memory, say) while daprd runs on. daprd's
// client dials the socket again, and the new process never saw daprd's
// Init: each publish must fail with what happened and the fix (restart
// daprd), and once daprd restarts everything works again.
func TestComponentRestartedUnderDaprd(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("comprestart")
		if _, err := n.Tweet(e.ctx, tag(t)+" before", "", ""); err != nil {
			t.Fatal(err)
		}
		if err := n.StopComponent(20 * time.Second); err != nil {
			t.Errorf("the component did not stop cleanly: %v", err)
		}
		if err := n.StartComponent(); err != nil {
			t.Fatal(err)
		}
		var last error
		waitUntil(t, 15*time.Second, func() string {
			_, last = n.Tweet(e.ctx, tag(t)+" after", "", "")
			if last == nil || !strings.Contains(last.Error(), "restart daprd") {
				return fmt.Sprintf("a publish through daprd after the component restarted: %v", last)
			}
			return ""
		})
		t.Logf("daprd %s, publish after the component restarted: %.300s", v, last)
		if err := n.StopDaprd(30 * time.Second); err != nil {
			t.Errorf("daprd did not stop cleanly: %v", err)
		}
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Tweet(e.ctx, tag(t)+" after daprd restarted", "", ""); err != nil {
			t.Fatalf("publish after daprd restarted: %v", err)
		}
	})
}

// TestShutdownPausesDelivery (daprd 1.18): SIGTERM reaches daprd, started
// with --dapr-block-shutdown-duration as in Kubernetes, while the app handles
// an event slowly. daprd pauses its subscriptions (Pause on the component) and
// lets the handler finish: the event is acked once, never dead-lettered and
// never redelivered. A tweet published while daprd drains is not delivered to
// the paused daprd, and arrives, once, after the restart.
//
// daprd 1.18.1 pauses only on this path: a plain SIGTERM (no block-shutdown
// duration) cancels the subscriptions without Pause (TestShutdownCutsHandler).
// daprd 1.14 has no Pause/Resume at all.
func TestShutdownPausesDelivery(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		if v == "v1.14.0" {
			t.Skip("daprd 1.14 has no Pause/Resume for pluggable pub/sub")
		}
		const delay = 4 * time.Second
		e := newEnv(t, v)
		n := e.startNode("pause", withDelay(delay), withDaprdArgs("--dapr-block-shutdown-duration", "1s"))
		prefix := tag(t)
		first, err := n.Tweet(e.ctx, prefix+" slow", "", "")
		if err != nil {
			t.Fatal(err)
		}
		byID := func(id string) func(stack.Record) bool {
			return func(r stack.Record) bool { return r.Tweet().ID == id }
		}
		waitUntil(t, 30*time.Second, func() string {
			if len(filter(received(t, n).Events, stack.TopicCreated, byID(first))) == 0 {
				return "the app has not started handling the tweet"
			}
			return ""
		})

		ended := subscriptionEnded(stack.TopicCreated)
		endedBefore := len(ended.FindAllStringIndex(n.Component.Output(), -1))
		stoppedAt := time.Now()
		if err := n.Daprd.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		pauseLog := "pausing subscription on topic " + stack.TopicCreated
		waitUntil(t, 10*time.Second, func() string {
			if !strings.Contains(n.Daprd.Output(), pauseLog) {
				return "daprd did not pause the subscription to " + stack.TopicCreated
			}
			return ""
		})
		// daprd's APIs still serve while it drains: this tweet goes to
		// JetStream, but not to the paused daprd, once the pause has ended
		// daprd's subscription at the component.
		waitUntil(t, 10*time.Second, func() string {
			if len(ended.FindAllStringIndex(n.Component.Output(), -1)) == endedBefore {
				return "the component still serves daprd's subscription to " + stack.TopicCreated
			}
			return ""
		})
		second, err := n.Tweet(e.ctx, prefix+" published while draining", "", "")
		if err != nil {
			t.Fatalf("publish while daprd drains: %v", err)
		}
		select {
		case <-n.Daprd.Done():
		case <-time.After(60 * time.Second):
			t.Fatal("daprd did not exit within 60s of SIGTERM")
		}
		t.Logf("daprd exited %s after SIGTERM (%v)", time.Since(stoppedAt).Round(time.Millisecond), n.Daprd.Err())
		if err := n.Daprd.Err(); err != nil {
			t.Errorf("daprd did not exit cleanly: %v", err)
		}
		rec := received(t, n).Events
		if got := filter(rec, stack.TopicCreated, byID(first)); len(got) != 1 || got[0].Status != "SUCCESS" {
			t.Errorf("the slow tweet: %+v, want one delivery handled to the end", got)
		}
		if got := filter(rec, stack.TopicCreated, byID(second)); len(got) != 0 {
			t.Errorf("the tweet published during the drain reached the paused daprd: %+v", got)
		}

		restartedAt := time.Now()
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 30*time.Second, func() string {
			if len(filter(received(t, n).Events, stack.TopicCreated, byID(second))) == 0 {
				return "the tweet published during the drain has not arrived after the restart"
			}
			return ""
		})
		waitSettled(t, e, n, stack.TopicCreated) // its handling ends and is acked
		checkNoDeadLetters(t, e, n)
		rec = received(t, n).Events
		if got := filter(rec, stack.TopicCreated, byID(first)); len(got) != 1 {
			t.Errorf("the slow tweet was delivered %d times, want once", len(got))
		}
		if got := filter(rec, stack.TopicCreated, byID(second)); len(got) != 1 || got[0].Attempt != 1 || got[0].Time.Before(restartedAt) {
			t.Errorf("the tweet published during the drain: %+v, want one first delivery after the restart", got)
		}
	})
}

// TestShutdownCutsHandler: a plain SIGTERM reaches daprd while the app
// handles an event. daprd does not settle the event: 1.18 waits for its grace
// period (shorter than the handler here) and exits, 1.14 exits at once; both
// neither ack, nack nor dead-letter a message whose handling shutdown cut.
// The component gives the message back to JetStream when daprd's stream ends,
// and it arrives again (attempt 2) after the restart; nothing lands in the
// dead-letter topic.
func TestShutdownCutsHandler(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const delay = 4 * time.Second
		e := newEnv(t, v)
		// A grace period shorter than the handler, so daprd gives up on it.
		n := e.startNode("cut", withDelay(delay), withDaprdArgs("--dapr-graceful-shutdown-seconds", "1"))
		id, err := n.Tweet(e.ctx, tag(t)+" slow", "", "")
		if err != nil {
			t.Fatal(err)
		}
		mine := func(r stack.Record) bool { return r.Tweet().ID == id }
		waitUntil(t, 30*time.Second, func() string {
			if len(filter(received(t, n).Events, stack.TopicCreated, mine)) == 0 {
				return "the app has not started handling the tweet"
			}
			return ""
		})

		stoppedAt := time.Now()
		err = n.StopDaprd(30 * time.Second)
		t.Logf("daprd stopped %s after SIGTERM (%v)", time.Since(stoppedAt).Round(time.Millisecond), err)
		// Let the app finish its orphaned handling, then restart: the
		// scenario's timing, not a wait for a condition.
		time.Sleep(time.Until(stoppedAt.Add(delay)))
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		var recs []stack.Record
		waitUntil(t, 30*time.Second, func() string {
			recs = filter(received(t, n).Events, stack.TopicCreated, mine)
			if len(recs) < 2 {
				return fmt.Sprintf("the tweet was delivered %d times, want a second delivery after the restart", len(recs))
			}
			return ""
		})
		if recs[1].Attempt != 2 || recs[1].Time.Before(stoppedAt) {
			t.Errorf("second delivery %+v: want attempt 2 after the restart", recs[1])
		}
		waitSettled(t, e, n, stack.TopicCreated) // the second handling ends and is acked
		if got := filter(received(t, n).Events, stack.TopicCreated, mine); len(got) != 2 {
			t.Errorf("the tweet was delivered %d times, want 2", len(got))
		}
		checkNoDeadLetters(t, e, n)
	})
}

// checkNoDeadLetters checks that nothing reached the dead-letter topic and
// that the tweet_created durable has nothing left to deliver or settle.
func checkNoDeadLetters(t *testing.T, e *env, n *stack.Node) {
	t.Helper()
	if dl := filter(received(t, n).Events, stack.TopicDeadLetter, func(stack.Record) bool { return true }); len(dl) != 0 {
		t.Errorf("the dead-letter topic got %d events: %+v", len(dl), dl)
	}
	st, err := e.js.Stream(e.ctx, stack.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(e.ctx, jetstream.WithSubjectFilter(stack.TopicDeadLetter))
	if err != nil {
		t.Fatal(err)
	}
	if c := info.State.Subjects[stack.TopicDeadLetter]; c != 0 {
		t.Errorf("the stream holds %d dead letters", c)
	}
	ci := consumerInfo(t, e, n.AppID, stack.TopicCreated)
	if ci.NumAckPending != 0 || ci.NumPending != 0 {
		t.Errorf("consumer %s: %d unacknowledged, %d undelivered", ci.Name, ci.NumAckPending, ci.NumPending)
	}
}
