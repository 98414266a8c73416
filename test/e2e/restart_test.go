//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// poster posts tweets through the app without pause until stopped, and
// remembers which posts succeeded (daprd answered the publish) and when.
type poster struct {
	n      *stack.Node
	prefix string
	stop   chan struct{}
	done   chan struct{}

	mu        sync.Mutex
	ok        map[string]time.Time // text -> when the publish was acknowledged
	failed    int
	errs      map[string]int // each error's text -> how many posts failed with it
	lastErr   error
	lastErrAt time.Time
}

func startPoster(n *stack.Node, prefix string) *poster {
	return startPosters(n, prefix, 20*time.Millisecond, 1)
}

// startPosters is startPoster with workers posting side by side, each with a
// pause of every between posts (for an app whose handler is slower than one
// post in 20 ms, or 0 to post as fast as daprd answers).
func startPosters(n *stack.Node, prefix string, every time.Duration, workers int) *poster {
	p := &poster{n: n, prefix: prefix, stop: make(chan struct{}), done: make(chan struct{}), ok: map[string]time.Time{}, errs: map[string]int{}}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.post(w, every)
		}()
	}
	go func() {
		wg.Wait()
		close(p.done)
	}()
	return p
}

// post is one worker of the poster.
func (p *poster) post(worker int, every time.Duration) {
	pause := every
	for i := 0; ; i++ {
		select {
		case <-p.stop:
			return
		case <-time.After(pause):
		}
		text := fmt.Sprintf("%s #%d", p.prefix, i)
		if worker > 0 {
			text = fmt.Sprintf("%s #%d.%d", p.prefix, worker, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := p.n.Tweet(ctx, text, "", "")
		cancel()
		p.mu.Lock()
		pause = every
		if err == nil {
			p.ok[text] = time.Now()
		} else {
			p.failed++
			p.errs[err.Error()]++
			p.lastErr, p.lastErrAt = err, time.Now()
			// Not to spin while daprd is away.
			pause = max(every, 5*time.Millisecond)
		}
		p.mu.Unlock()
	}
}

// errors is how many posts failed with each error text.
func (p *poster) errors() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.errs)
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

// lastError is when the latest failed post failed, and its error.
func (p *poster) lastError() (time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErrAt, p.lastErr
}

// firstOKAfter is when the first post acknowledged after t0 was, if any.
func (p *poster) firstOKAfter(t0 time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first time.Time
	for _, at := range p.ok {
		if at.After(t0) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first, !first.IsZero()
}

func (p *poster) finish() (map[string]time.Time, int) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok, p.failed
}

// finishWith stops p and returns what it posted, together with backlog,
// which another producer published while what the test names happened.
func (p *poster) finishWith(t *testing.T, backlog map[string]time.Time, while string) map[string]time.Time {
	t.Helper()
	posted, failed := p.finish()
	t.Logf("%d posts succeeded, %d failed while %s", len(posted), failed, while)
	for text, at := range backlog {
		posted[text] = at
	}
	return posted
}

// checkResumed waits until every successful post reached the app, and checks
// that the durable resumed where it was: what the app had handled well before
// the restart (stoppedAt) is not delivered again, and the consumer is the
// one that existed before.
func checkResumed(t *testing.T, e *env, n *stack.Node, posted map[string]time.Time, stoppedAt time.Time, before *jetstream.ConsumerInfo) {
	t.Helper()
	checkResumedWithin(t, e, n, posted, stoppedAt, before, 10)
}

// checkResumedWithin is checkResumed with up to maxAgain tweets delivered
// again, for a daprd that had more than 10 in flight.
func checkResumedWithin(t *testing.T, e *env, n *stack.Node, posted map[string]time.Time, stoppedAt time.Time, before *jetstream.ConsumerInfo, maxAgain int) {
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
	if len(again) > maxAgain {
		t.Errorf("%d tweets were delivered again, more than the %d that may have been in flight: the durable did not resume where it was", len(again), maxAgain)
	}

	// The app records a message before it answers, so the last acks may
	// still be on their way; well within ackWait, which would bring back
	// a message whose ack was lost and hide it.
	var after *jetstream.ConsumerInfo
	err := natstest.Await(3*time.Second, 50*time.Millisecond, nil, func() error {
		c, err := e.js.Consumer(e.ctx, stack.Stream, stack.ConsumerName(n.AppID, stack.TopicCreated))
		if err != nil {
			return err
		}
		after = c.CachedInfo()
		if after.NumAckPending != 0 || after.NumPending != 0 {
			return fmt.Errorf("consumer %s still has %d unacknowledged and %d undelivered messages", after.Name, after.NumAckPending, after.NumPending)
		}
		return nil
	})
	if after == nil {
		t.Fatal(err)
	}
	if !after.Created.Equal(before.Created) {
		t.Errorf("consumer %s was created again (%s, before %s)", after.Name, after.Created, before.Created)
	}
	if err != nil {
		t.Error(err)
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
		backlog := publishBacklog(t, e, 5)
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("daprd restarted in %s", time.Since(stoppedAt).Round(time.Millisecond))
		p.waitMore(t, 30)
		posted := p.finishWith(t, backlog, "daprd was down")
		checkResumed(t, e, n, posted, stoppedAt, before)
	})
}

// publishBacklog publishes count tweets straight to JetStream, as another
// producer would, and returns their texts with when they were stored.
func publishBacklog(t *testing.T, e *env, count int) map[string]time.Time {
	t.Helper()
	backlog := map[string]time.Time{}
	for i := range count {
		text := fmt.Sprintf("%s while down %d", tag(t), i)
		ce := fmt.Sprintf(`{"specversion":"1.0","id":"down-%d","source":"nats","type":"tweet","datacontenttype":"application/json","data":{"id":"down-%d","text":%q}}`, i, i, text)
		if _, err := e.js.Publish(e.ctx, stack.TopicCreated, []byte(ce)); err != nil {
			t.Fatal(err)
		}
		backlog[text] = time.Now()
	}
	return backlog
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
		restartPod(t, e, n, stoppedAt)
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

// stopNATS shuts the scenario's nats-server down, as in an outage, and
// returns its port for restartNATS (a stopped server no longer has one).
func (e *env) stopNATS() int {
	port := e.ns.Addr().(*net.TCPAddr).Port
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
	return port
}

// restartNATS brings the nats-server back on port after an outage, with the
// same store, so its streams and consumers are those from before.
func (e *env) restartNATS(port int) {
	e.t.Helper()
	ns, err := stack.StartNATSOn(e.natsDir, port)
	if err != nil {
		e.t.Fatalf("nats-server on port %d again: %v", port, err)
	}
	e.ns = ns
}

// natsOutage describes one run of outageScenario.
type natsOutage struct {
	// length is how long NATS stays away, counted from its shutdown.
	length time.Duration
	// restartComponent also restarts the component process during the
	// outage, before daprd comes back.
	restartComponent bool
}

// outageScenario: the app publishes without pause; daprd stops, another
// producer leaves a backlog in JetStream, then NATS goes away. While NATS is
// down daprd starts again (with the component restarted too, if asked), so
// its Init and subscriptions reach the component with no NATS behind it.
// daprd must become healthy, publishes must fail saying that NATS is not
// reachable, and once NATS is back publishing must work again within
// seconds, every accepted tweet and the backlog must reach the app, and the
// durable must resume where it was.
func outageScenario(t *testing.T, e *env, n *stack.Node, o natsOutage) {
	t.Helper()
	before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
	p := startPoster(n, tag(t))
	p.waitMore(t, 30)

	stoppedAt := time.Now()
	if err := n.StopDaprd(30 * time.Second); err != nil {
		t.Errorf("daprd did not stop cleanly: %v", err)
	}
	backlog := publishBacklog(t, e, 5)
	port := e.stopNATS()
	downAt := time.Now()
	if o.restartComponent {
		if err := n.StopComponent(20 * time.Second); err != nil {
			t.Errorf("the component did not stop cleanly: %v", err)
		}
		if err := n.StartComponent(); err != nil {
			t.Fatal(err)
		}
	}
	timeoutsBefore := len(unanswered.FindAllStringIndex(n.Component.Output(), -1))
	if err := n.StartDaprd(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitDaprdHealthy(e.ctx); err != nil {
		t.Fatalf("daprd started while NATS is down: %v", err)
	}
	t.Logf("daprd healthy %s after it started with NATS down", time.Since(downAt).Round(time.Millisecond))
	checkOutagePublishError(t, p, downAt)
	waitSubscriptionSaysNATSDown(t, n, stack.TopicCreated)

	time.Sleep(time.Until(downAt.Add(o.length))) // the outage itself
	if c := len(unanswered.FindAllStringIndex(n.Component.Output(), -1)); c != timeoutsBefore {
		t.Errorf("the component logged %d JetStream timeouts during the outage, which was NATS being unreachable:\n%s", c-timeoutsBefore, n.Component.Tail(20))
	}
	e.restartNATS(port)
	upAt := time.Now()
	t.Logf("NATS back after %s", upAt.Sub(downAt).Round(time.Millisecond))
	waitUntil(t, 30*time.Second, func() string {
		if _, ok := p.firstOKAfter(upAt); !ok {
			_, err := p.lastError()
			return fmt.Sprintf("no publish has succeeded since NATS came back; last error: %v", err)
		}
		return ""
	})
	first, _ := p.firstOKAfter(upAt)
	t.Logf("publishing works again %s after NATS came back", first.Sub(upAt).Round(time.Millisecond))
	if d := first.Sub(upAt); d > 5*time.Second {
		t.Errorf("publishing worked again only %s after NATS came back, want within 5s", d.Round(time.Millisecond))
	}
	p.waitMore(t, 30)
	posted := p.finishWith(t, backlog, "daprd or NATS was down")
	checkResumed(t, e, n, posted, stoppedAt, before)
}

// checkOutagePublishError waits until a publish through daprd, made after
// daprd is back, fails saying that NATS is not connected.
func checkOutagePublishError(t *testing.T, p *poster, downAt time.Time) {
	t.Helper()
	since := time.Now()
	var last error
	waitUntil(t, 20*time.Second, func() string {
		at, err := p.lastError()
		last = err
		if err == nil || at.Before(since) || !strings.Contains(err.Error(), "NATS") {
			return fmt.Sprintf("no publish through daprd has failed naming NATS since daprd is back; last error: %v", err)
		}
		return ""
	})
	t.Logf("a publish while NATS is down (%s after it went): %.400s", time.Since(downAt).Round(time.Millisecond), last)
}

// unanswered matches the component's log of a JetStream call that timed
// out, which points at JetStream itself (leader elections, load).
var unanswered = regexp.MustCompile(`JetStream did not answer in time`)

// waitSubscriptionSaysNATSDown waits until the component logs that daprd's
// subscription to topic waits for NATS, naming NATS and that it is not
// connected, rather than a JetStream timeout.
func waitSubscriptionSaysNATSDown(t *testing.T, n *stack.Node, topic string) {
	t.Helper()
	re := regexp.MustCompile(`topic \\?"` + regexp.QuoteMeta(topic) + `\\?": NATS at \S+ is not connected`)
	waitUntil(t, 10*time.Second, func() string {
		if !re.MatchString(n.Component.Output()) {
			return fmt.Sprintf("the component has not logged that the subscription to %s waits for NATS:\n%s", topic, n.Component.Tail(10))
		}
		return ""
	})
}

// TestNATSOutageDaprdRestart: NATS goes away and daprd restarts during the
// outage (see outageScenario).
func TestNATSOutageDaprdRestart(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("outage")
		outageScenario(t, e, n, natsOutage{length: 10 * time.Second})
	})
}

// TestNATSOutageComponentRestart: as TestNATSOutageDaprdRestart, and the
// component process restarts during the outage too, so it starts without
// NATS and its first connection is made only when NATS comes back. The
// backlog reached the old process's open pull requests after daprd left, to
// be handed to the next subscription; that process stops with NATS away and
// cannot give it back, so it comes again once ackWait (30 s) has passed since
// its delivery, after the newer tweets.
func TestNATSOutageComponentRestart(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("outagecomp")
		outageScenario(t, e, n, natsOutage{length: 10 * time.Second, restartComponent: true})
	})
}

// TestNATSOutageLongerThanAckWait: the app takes its time over a tweet while
// NATS goes away for longer than the consumer's ackWait, with more tweets
// waiting behind it. daprd acks the held tweet during the outage. When NATS
// is back, every tweet arrives, none more than twice (only what was in
// flight comes again), publishing works again within seconds, and the
// durable settles: no ack lost in the outage leaves a message pending.
func TestNATSOutageLongerThanAckWait(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const (
			delay   = 3 * time.Second
			ackWait = 2 * time.Second
			outage  = 7 * time.Second
		)
		e := newEnv(t, v)
		n := e.startNode("outageack", withDelay(delay), withMetadata(map[string]string{"ackWait": ackWait.String()}))
		prefix := tag(t)
		ids := map[string]string{} // id -> text
		for i := range 4 {
			text := fmt.Sprintf("%s held %d", prefix, i)
			id, err := n.Tweet(e.ctx, text, "", "")
			if err != nil {
				t.Fatal(err)
			}
			ids[id] = text
		}
		mine := func(r stack.Record) bool { _, ok := ids[r.Tweet().ID]; return ok }
		waitUntil(t, 30*time.Second, func() string {
			if len(filter(received(t, n).Events, stack.TopicCreated, mine)) == 0 {
				return "the app has not started handling a tweet"
			}
			return ""
		})

		port := e.stopNATS()
		downAt := time.Now()
		time.Sleep(outage) // the outage itself, longer than ackWait and the handler
		e.restartNATS(port)
		upAt := time.Now()
		waitUntil(t, 10*time.Second, func() string {
			if _, err := n.Tweet(e.ctx, prefix+" after", "", ""); err != nil {
				return fmt.Sprintf("publish after NATS came back: %v", err)
			}
			return ""
		})
		t.Logf("NATS down for %s; publishing works again %s after it came back", upAt.Sub(downAt).Round(time.Millisecond), time.Since(upAt).Round(time.Millisecond))

		var recs []stack.Record
		waitUntil(t, 60*time.Second, func() string {
			recs = filter(received(t, n).Events, stack.TopicCreated, mine)
			if got := distinctIDs(recs); got < len(ids) {
				return fmt.Sprintf("%d of %d tweets arrived", got, len(ids))
			}
			return ""
		})
		waitSettled(t, e, n, stack.TopicCreated)
		recs = filter(received(t, n).Events, stack.TopicCreated, mine)
		times := map[string]int{}
		for _, r := range recs {
			times[ids[r.Tweet().ID]]++
		}
		t.Logf("deliveries per tweet: %v (settled %s after NATS came back)", times, time.Since(upAt).Round(time.Millisecond))
		for text, c := range times {
			if c > 2 {
				t.Errorf("%q was delivered %d times, want at most twice", text, c)
			}
		}
		checkNoDeadLetters(t, e, n)
	})
}

// distinctIDs counts the tweets among recs.
func distinctIDs(recs []stack.Record) int {
	seen := map[string]bool{}
	for _, r := range recs {
		seen[r.Tweet().ID] = true
	}
	return len(seen)
}

// TestNATSOutageDaprdRestartWhileHandling: NATS goes away while a slow app
// works through tweets, and daprd restarts during the outage, so its
// subscription ends with messages in flight while the component cannot give
// them back to JetStream, and the new subscription starts with no NATS. The
// outage is longer than ackWait. When NATS is back every tweet arrives, none
// more than twice, the durable settles and is the one from before.
func TestNATSOutageDaprdRestartWhileHandling(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const (
			delay   = time.Second
			ackWait = 2 * time.Second
			outage  = 35 * time.Second
		)
		e := newEnv(t, v)
		n := e.startNode("outagehandling", withDelay(delay), withMetadata(map[string]string{"ackWait": ackWait.String()}))
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		prefix := tag(t)
		ids := map[string]string{} // id -> text
		for i := range 8 {
			text := fmt.Sprintf("%s queued %d", prefix, i)
			id, err := n.Tweet(e.ctx, text, "", "")
			if err != nil {
				t.Fatal(err)
			}
			ids[id] = text
		}
		mine := func(r stack.Record) bool { _, ok := ids[r.Tweet().ID]; return ok }
		waitUntil(t, 30*time.Second, func() string {
			if len(filter(received(t, n).Events, stack.TopicCreated, mine)) == 0 {
				return "the app has not started handling a tweet"
			}
			return ""
		})

		port := e.stopNATS()
		downAt := time.Now()
		if err := n.StopDaprd(30 * time.Second); err != nil {
			t.Logf("daprd stopped: %v", err)
		}
		handledBefore := distinctIDs(filter(received(t, n).Events, stack.TopicCreated, mine))
		if err := n.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatalf("daprd started while NATS is down: %v", err)
		}
		t.Logf("daprd restarted %s into the outage; %d of %d tweets had reached the app", time.Since(downAt).Round(time.Millisecond), handledBefore, len(ids))
		time.Sleep(time.Until(downAt.Add(outage))) // the outage itself
		e.restartNATS(port)
		upAt := time.Now()

		var recs []stack.Record
		waitUntil(t, 60*time.Second, func() string {
			recs = filter(received(t, n).Events, stack.TopicCreated, mine)
			if got := distinctIDs(recs); got < len(ids) {
				return fmt.Sprintf("%d of %d tweets arrived", got, len(ids))
			}
			return ""
		})
		t.Logf("every tweet arrived %s after NATS came back", time.Since(upAt).Round(time.Millisecond))
		waitSettled(t, e, n, stack.TopicCreated)
		recs = filter(received(t, n).Events, stack.TopicCreated, mine)
		times := map[string]int{}
		for _, r := range recs {
			times[ids[r.Tweet().ID]]++
		}
		t.Logf("%d deliveries of %d tweets: %v", len(recs), len(ids), times)
		for text, c := range times {
			if c > 2 {
				t.Errorf("%q was delivered %d times, want at most twice", text, c)
			}
		}
		if after := consumerInfo(t, e, n.AppID, stack.TopicCreated); !after.Created.Equal(before.Created) {
			t.Errorf("consumer %s was created again (%s, before %s)", after.Name, after.Created, before.Created)
		}
		checkNoDeadLetters(t, e, n)
	})
}

// podStop is one way a pod's daprd and component end, as the kubelet ends
// them when the pod is deleted: SIGTERM to every container at once, and
// SIGKILL after terminationGracePeriodSeconds.
type podStop struct {
	// natsDown stops nats-server first; it comes back before the new pod.
	natsDown bool
	// kill is the grace period: what still runs this long after SIGTERM is
	// killed. 0 waits for the exits.
	kill time.Duration
	// metadata and daprdArgs configure the node.
	metadata  map[string]string
	daprdArgs []string
}

// podExit is when each process exited, counted from its SIGTERM, and
// whether it was killed.
type podExit struct {
	daprd, component             time.Duration
	daprdKilled, componentKilled bool
}

// terminatePod signals daprd and the component as ps says and waits for both
// to be gone (the app keeps running: it holds the test's records).
func terminatePod(t *testing.T, n *stack.Node, ps podStop) podExit {
	t.Helper()
	var x podExit
	term := func(p *natstest.Proc) time.Time {
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	comp, daprd := n.Component, n.Daprd
	compAt, daprdAt := term(comp), term(daprd)
	bound := 60 * time.Second
	if ps.kill > 0 {
		bound = ps.kill
	}
	wait := func(p *natstest.Proc, at time.Time) (time.Duration, bool) {
		if ok, _ := p.Wait(time.Until(at.Add(bound))); ok {
			return time.Since(at), false
		}
		if ps.kill == 0 {
			t.Fatalf("%s did not exit within %s of SIGTERM:\n%s", p.Name, bound, p.Tail(20))
		}
		p.Kill()
		return time.Since(at), true
	}
	x.component, x.componentKilled = wait(comp, compAt)
	x.daprd, x.daprdKilled = wait(daprd, daprdAt)
	// The stack's -drain-timeout 5s, and 5s to close and stop gRPC.
	if bound := 10 * time.Second; x.component > bound && !x.componentKilled {
		t.Errorf("the component exited %s after SIGTERM, want within %s (its drain and shutdown grace)", x.component.Round(time.Millisecond), bound)
	}
	t.Logf("component exited %s after SIGTERM (killed: %v, %v); daprd %s (killed: %v, %v)",
		x.component.Round(time.Millisecond), x.componentKilled, comp.Err(), x.daprd.Round(time.Millisecond), x.daprdKilled, daprd.Err())
	return x
}

// restartPod starts the component and daprd again, as the pod that replaces
// one stopped at stoppedAt, and waits until daprd is healthy.
func restartPod(t *testing.T, e *env, n *stack.Node, stoppedAt time.Time) {
	t.Helper()
	if err := n.StartComponent(); err != nil {
		t.Fatal(err)
	}
	if err := n.StartDaprd(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitDaprdHealthy(e.ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("component and daprd started again, healthy %s after the old ones were stopped", time.Since(stoppedAt).Round(time.Millisecond))
}

// podScenario: the app handles a steady flow slowly, with a backlog behind
// it, when its pod is deleted (see podStop). The new pod's component and
// daprd start; every post daprd accepted and the whole backlog reach the app,
// and the durable resumes where it was.
func podScenario(t *testing.T, v string, ps podStop) {
	const delay = 200 * time.Millisecond
	e := newEnv(t, v)
	n := e.startNode("pod", withDelay(delay), withMetadata(ps.metadata), withDaprdArgs(ps.daprdArgs...))
	before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
	p := startPosters(n, tag(t), 500*time.Millisecond, 1)
	backlog := publishBacklog(t, e, 30)
	waitUntil(t, 30*time.Second, func() string {
		in := filter(received(t, n).Events, stack.TopicCreated, func(r stack.Record) bool { _, ok := backlog[r.Tweet().Text]; return ok })
		if len(in) < 5 {
			return fmt.Sprintf("the app handled %d of the backlog, want 5 before the pod goes", len(in))
		}
		return ""
	})
	var port int
	if ps.natsDown {
		port = e.stopNATS()
	}
	stoppedAt := time.Now()
	terminatePod(t, n, ps)
	if ps.natsDown {
		e.restartNATS(port)
	}
	restartPod(t, e, n, stoppedAt)
	p.waitMore(t, 5)
	_, lastErr := p.lastError()
	posted, failed := p.finish()
	t.Logf("%d posts succeeded, %d failed; the last failure: %.600v", len(posted), failed, lastErr)
	for text, at := range backlog {
		posted[text] = at
	}
	// daprd 1.14 has every message it holds in the app's handlers at once: up
	// to maxInFlight (100) come again, each handled less than a second
	// before the pod went.
	checkResumedWithin(t, e, n, posted, stoppedAt, before, 100)
}

// TestPodTerminatedTogether: SIGTERM reaches daprd and the component at
// once, as when the pod is deleted, while the app works through a backlog
// (see podScenario).
func TestPodTerminatedTogether(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) { podScenario(t, v, podStop{}) })
}

// TestPodDaprdOutlivesComponent: as TestPodTerminatedTogether, with daprd
// blocking its shutdown (dapr.io/block-shutdown-duration) past the
// component's drain: the component exits first while daprd still has
// messages for the app, whose acks then find no component. What the
// component gave back comes again; nothing is lost.
func TestPodDaprdOutlivesComponent(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		podScenario(t, v, podStop{daprdArgs: []string{"--dapr-block-shutdown-duration", "7s"}})
	})
}

// TestPodTerminatedWithNATSDown: as TestPodTerminatedTogether, with NATS
// stopped first and back before the new pod: what the old component held
// comes again after ackWait.
func TestPodTerminatedWithNATSDown(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		podScenario(t, v, podStop{natsDown: true, metadata: map[string]string{"ackWait": "5s"}})
	})
}

// TestPodKilledAfterGrace: SIGTERM to daprd (blocking its shutdown) and the
// component (draining), then SIGKILL to both 2s later, as when the grace
// period ends: what they held comes again after ackWait.
func TestPodKilledAfterGrace(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		podScenario(t, v, podStop{kill: 2 * time.Second, metadata: map[string]string{"ackWait": "5s"}, daprdArgs: []string{"--dapr-block-shutdown-duration", "10s"}})
	})
}

// TestPublishWhilePodStops: the app publishes from four callers as fast as
// daprd answers when its pod is deleted: SIGTERM reaches daprd and the
// component at once, and daprd blocks its shutdown for 3s (as with
// dapr.io/block-shutdown-duration), so its API still serves while the
// component closes. A publish the component refuses because it is shutting
// down says so and what to do, never a bare "closed"; every publish daprd
// accepted reaches the app once the new pod has started.
func TestPublishWhilePodStops(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("podpublish", withDaprdArgs("--dapr-block-shutdown-duration", "3s"))
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		p := startPosters(n, tag(t), 0, 4)
		p.waitMore(t, 200)
		stoppedAt := time.Now()
		terminatePod(t, n, podStop{})
		restartPod(t, e, n, stoppedAt)
		p.waitMore(t, 50)
		errs := p.errors()
		posted, failed := p.finish()
		t.Logf("%d posts succeeded, %d failed", len(posted), failed)
		fromComponent := 0
		for text, c := range errs {
			// daprd's own errors: its API closing, the socket gone, or
			// daprd closing its client of the Component under a call.
			if !strings.Contains(text, "rpc error") || strings.Contains(text, "connection error") || strings.Contains(text, "client connection is closing") {
				continue
			}
			fromComponent += c
			if strings.Contains(text, "jetstream pubsub: closed") || !strings.Contains(text, "shutting down") {
				t.Errorf("%d publishes failed with an error that does not say the component is shutting down: %.500s", c, text)
			}
		}
		t.Logf("%d publishes were refused by the component as it shut down", fromComponent)
		checkResumed(t, e, n, posted, stoppedAt, before)
	})
}
