//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// hotReload starts daprd with the HotReload preview feature: a self-hosted
// daprd then watches its resources folder and applies what changes there
// (pkg/runtime/hotreload in dapr/dapr 1.14 and 1.18). The Configuration lives
// outside the resources folder, as daprd reads it only through --config.
func hotReload(t *testing.T) nodeOpt {
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: hotreload\nspec:\n  features:\n    - name: HotReload\n      enabled: true\n"
	if err := os.WriteFile(path, []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	return withDaprdArgs("--config", path)
}

// writeResource writes file name of the node's resources folder the way an
// editor saves it: aside, then renamed over the old one, so that daprd never
// reads half a file.
func writeResource(t *testing.T, n *stack.Node, name, content string) {
	t.Helper()
	tmp := filepath.Join(n.Dir, name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.ResourcesDir, name)); err != nil {
		t.Fatal(err)
	}
}

func removeResource(t *testing.T, n *stack.Node, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.ResourcesDir, name)); err != nil {
		t.Fatal(err)
	}
}

// logCount counts the lines of the component's output that contain s.
func logCount(n *stack.Node, s string) int { return strings.Count(n.Component.Output(), s) }

// waitLog waits until the component's output has more than before lines
// that contain s.
func waitLog(t *testing.T, n *stack.Node, s string, before, more int) {
	t.Helper()
	waitUntil(t, 30*time.Second, func() string {
		if c := logCount(n, s); c < before+more {
			return fmt.Sprintf("the component logged %q %d times since, want %d:\n%s", s, c-before, more, n.Component.Tail(20))
		}
		return ""
	})
}

// checkNATSClients checks, within 15s, that nats-server has want clients:
// the test's own and one per open instance. It reports with t.Errorf, so
// that the scenario goes on.
func checkNATSClients(t *testing.T, e *env, want int, what string) {
	t.Helper()
	checkNATSClientsWithin(t, e, want, what, 15*time.Second)
}

// retireBound is how long the instance of a deleted Component may keep its
// NATS connection: while messages its subscriptions held when they ended
// wait for the next subscription of their consumers (30s at most, checked
// every second), and no other instance on the account can keep them.
const retireBound = 35 * time.Second

func checkNATSClientsWithin(t *testing.T, e *env, want int, what string, within time.Duration) {
	t.Helper()
	err := natstest.Await(within, 100*time.Millisecond, nil, func() error {
		if c := e.ns.NumClients(); c != want {
			return fmt.Errorf("nats-server has %d clients, want %d (%s)", c, want, what)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// consumerNames lists the stream's consumers.
func consumerNames(t *testing.T, e *env) []string {
	t.Helper()
	st, err := e.js.Stream(e.ctx, stack.Stream)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	l := st.ConsumerNames(e.ctx)
	for name := range l.Name() {
		names = append(names, name)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// publishVia publishes {"id", "text"} to topic through daprd's HTTP API
// under pubsub name, and returns daprd's status.
func publishVia(ctx context.Context, n *stack.Node, pubsub, topic, text string) (int, error) {
	status, body, err := stack.Do(ctx, http.MethodPost, n.DaprdURL("/v1.0/publish/"+pubsub+"/"+topic), map[string]string{"id": text, "text": text})
	if err == nil && status != http.StatusNoContent {
		err = fmt.Errorf("publish to %s/%s: status %d: %s", pubsub, topic, status, body)
	}
	return status, err
}

// TestHotReloadComponentEdited: an operator edits the Component YAML
// (maxInFlight and ackWait) while the app publishes without pause. daprd
// closes the instance and initialises the Component again: every publish
// daprd accepted reaches the app, the subscriptions resume on the same
// durables (now with the new ackWait), and the component process keeps one
// NATS connection and no consumer more than before.
func TestHotReloadComponentEdited(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("hotedit", hotReload(t))
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		clients := e.ns.NumClients()
		consumers := len(consumerNames(t, e))
		p := startPoster(n, tag(t))
		p.waitMore(t, 30)

		const subscribed = "daprd subscribed to topic"
		subs := logCount(n, subscribed)
		editedAt := time.Now()
		n.ComponentMetadata = map[string]string{"maxInFlight": "50", "ackWait": "20s"}
		writeResource(t, n, "pubsub.yaml", n.ComponentYAML())
		waitLog(t, n, subscribed, subs, len(stack.AppTopics))
		t.Logf("daprd %s initialised the edited Component and subscribed again %s after the edit", v, time.Since(editedAt).Round(time.Millisecond))
		p.waitMore(t, 30)
		errs := p.errors()
		posted, failed := p.finish()
		t.Logf("%d posts succeeded, %d failed during the reload: %v", len(posted), failed, errs)
		checkResumed(t, e, n, posted, editedAt, before)
		if got := consumerInfo(t, e, n.AppID, stack.TopicCreated).Config.AckWait; got != 20*time.Second {
			t.Errorf("the durable's ackWait is %s after the edit, want 20s", got)
		}
		checkNATSClients(t, e, clients, "one NATS connection for the Component, as before the edit")
		if c := len(consumerNames(t, e)); c != consumers {
			t.Errorf("the stream has %d consumers after the edit, %d before", c, consumers)
		}
	})
}

// subscriptionYAML is a declarative Subscription (v2alpha1) of the app to
// topic, delivered to route.
func subscriptionYAML(name, topic, route string) string {
	return fmt.Sprintf("apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: %s\nspec:\n  pubsubname: %s\n  topic: %s\n  routes:\n    default: %s\nscopes:\n  - hotsub\n", name, stack.PubsubName, topic, route)
}

// TestHotReloadSubscriptionEdited: an operator edits declarative
// Subscriptions while the app publishes: the route changes, a topic is
// added, a topic removed, and the file deleted and restored. Every message
// reaches the route in force when it was delivered, the other subscriptions
// of the Component go on undisturbed, and messages published while a
// subscription was away arrive once it is back.
func TestHotReloadSubscriptionEdited(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const (
			topicA = stack.Stream + ".decl_a"
			topicB = stack.Stream + ".decl_b"
			routeA = "/events/liked"
			routeB = "/events/failed"
		)
		e := newEnv(t, v)
		n := e.newNode("hotsub", hotReload(t))
		writeResource(t, n, "subs.yaml", subscriptionYAML("decl-a", topicA, routeA))
		if _, err := e.tryStartNode(n); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitSubscribed(e.ctx, e.js, topicA); err != nil {
			t.Fatal(err)
		}
		tweets := startPoster(n, tag(t))
		prefix := tag(t)
		published := map[string]string{} // text -> topic
		seq := 0
		publish := func(topic string, count int) {
			t.Helper()
			for range count {
				seq++
				text := fmt.Sprintf("%s %d", prefix, seq)
				if _, err := publishVia(e.ctx, n, stack.PubsubName, topic, text); err != nil {
					t.Fatal(err)
				}
				published[text] = topic
			}
		}
		// deliveries lists, for each text published, the routes it was
		// delivered to, in order.
		deliveries := func() map[string][]string {
			out := map[string][]string{}
			for _, r := range received(t, n).Events {
				if _, ok := published[r.Tweet().Text]; ok {
					out[r.Tweet().Text] = append(out[r.Tweet().Text], r.Route)
				}
			}
			return out
		}
		waitArrived := func(what string) {
			t.Helper()
			waitUntil(t, 30*time.Second, func() string {
				if got := len(deliveries()); got < len(published) {
					return fmt.Sprintf("%s: %d of %d messages arrived", what, got, len(published))
				}
				return ""
			})
		}
		ended := func(topic string) int {
			return len(subscriptionEnded(topic).FindAllStringIndex(n.Component.Output(), -1))
		}
		const subscribed = "daprd subscribed to topic"

		publish(topicA, 5)
		waitArrived("before any change")

		// The route changes: daprd subscribes again.
		subs := logCount(n, subscribed)
		writeResource(t, n, "subs.yaml", subscriptionYAML("decl-a", topicA, routeB))
		waitLog(t, n, subscribed, subs, 1)
		changedAt := time.Now()
		publish(topicA, 5)
		waitArrived("after the route changed")

		// A topic is added.
		subs = logCount(n, subscribed)
		writeResource(t, n, "subs.yaml", subscriptionYAML("decl-a", topicA, routeB)+"---\n"+subscriptionYAML("decl-b", topicB, routeA))
		waitLog(t, n, subscribed, subs, 1)
		if err := n.WaitSubscribed(e.ctx, e.js, topicA, topicB); err != nil {
			t.Fatal(err)
		}
		publish(topicA, 5)
		publish(topicB, 5)
		waitArrived("after topic B was added")

		// Topic A is removed: its subscription ends at the component, and
		// what is published to it meanwhile waits in its durable.
		endedA := ended(topicA)
		writeResource(t, n, "subs.yaml", subscriptionYAML("decl-b", topicB, routeA))
		waitUntil(t, 30*time.Second, func() string {
			if ended(topicA) == endedA {
				return "the component still serves daprd's subscription to " + topicA
			}
			return ""
		})
		publish(topicB, 5)
		waitArrived("after topic A was removed")
		heldSeq := seq
		publish(topicA, 5) // not delivered until A comes back

		// The file is deleted, then restored with both topics.
		endedB := ended(topicB)
		removeResource(t, n, "subs.yaml")
		waitUntil(t, 30*time.Second, func() string {
			if ended(topicB) == endedB {
				return "the component still serves daprd's subscription to " + topicB
			}
			return ""
		})
		publish(topicB, 5)
		time.Sleep(time.Second) // a window for a wrong delivery to show, not a wait
		for text, routes := range deliveries() {
			var i int
			if _, err := fmt.Sscanf(strings.TrimPrefix(text, prefix+" "), "%d", &i); err == nil && i > heldSeq {
				t.Errorf("%q (%s) reached %v while its subscription was removed", text, published[text], routes)
			}
		}
		subs = logCount(n, subscribed)
		writeResource(t, n, "subs.yaml", subscriptionYAML("decl-a", topicA, routeB)+"---\n"+subscriptionYAML("decl-b", topicB, routeA))
		waitLog(t, n, subscribed, subs, 2)
		publish(topicA, 5)
		publish(topicB, 5)
		waitArrived("after the file was restored")

		tweets.waitMore(t, 10)
		posted, failed := tweets.finish()
		t.Logf("tweets alongside: %d published, %d failed", len(posted), failed)
		if failed > 0 {
			t.Errorf("%d tweets failed to publish while only Subscriptions changed: %v", failed, tweets.errors())
		}
		checkResumed(t, e, n, posted, time.Now(), consumerInfo(t, e, n.AppID, stack.TopicCreated))

		time.Sleep(time.Second) // a window for redeliveries to show, not a wait
		again := 0
		for text, routes := range deliveries() {
			if len(routes) > 1 {
				again++
				t.Errorf("%q (%s) was delivered %d times: %v", text, published[text], len(routes), routes)
			}
			want := routeA
			if published[text] == topicA {
				want = routeB
			}
			var i int
			_, _ = fmt.Sscanf(strings.TrimPrefix(text, prefix+" "), "%d", &i)
			if i > 5 && routes[len(routes)-1] != want {
				t.Errorf("%q (%s) reached %s, want %s (published after the route changed at %s)", text, published[text], routes[len(routes)-1], want, changedAt.Format(time.StampMilli))
			}
		}
		t.Logf("%d messages on the declarative topics, all delivered; %d more than once", len(published), again)
		for _, topic := range []string{topicA, topicB} {
			waitSettled(t, e, n, topic)
		}
	})
}

// TestHotReloadComponentDeleted: an operator deletes the Component YAML,
// then restores it. daprd closes the instance: its subscriptions end, and
// the component process closes the instance's NATS connection. What is
// published meanwhile (by another producer) waits in the durables and
// reaches the app once the Component is back.
func TestHotReloadComponentDeleted(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("hotdelete", hotReload(t))
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		clients := e.ns.NumClients()
		p := startPoster(n, tag(t))
		p.waitMore(t, 20)

		ended := subscriptionEnded(stack.TopicCreated)
		endedBefore := len(ended.FindAllStringIndex(n.Component.Output(), -1))
		deletedAt := time.Now()
		removeResource(t, n, "pubsub.yaml")
		waitUntil(t, 30*time.Second, func() string {
			if len(ended.FindAllStringIndex(n.Component.Output(), -1)) == endedBefore {
				return "the component still serves daprd's subscription to " + stack.TopicCreated
			}
			return ""
		})
		waitUntil(t, 30*time.Second, func() string {
			if at, _ := p.lastError(); at.Before(deletedAt) {
				return "daprd still accepts publishes to the deleted Component"
			}
			return ""
		})
		_, lastErr := p.lastError()
		t.Logf("daprd %s, a publish to the deleted Component: %.300v", v, lastErr)
		checkNATSClientsWithin(t, e, clients-1, "the instance of the deleted Component closed", retireBound)
		backlog := publishBacklog(t, e, 5)

		subs := logCount(n, "daprd subscribed to topic")
		writeResource(t, n, "pubsub.yaml", n.ComponentYAML())
		waitLog(t, n, "daprd subscribed to topic", subs, len(stack.AppTopics))
		t.Logf("subscribed again %s after the Component was deleted", time.Since(deletedAt).Round(time.Millisecond))
		p.waitMore(t, 20)
		posted := p.finishWith(t, backlog, "the Component was deleted")
		checkResumed(t, e, n, posted, deletedAt, before)
		checkNATSClients(t, e, clients, "one instance for the restored Component")
	})
}

// TestHotReloadComponentRenamed: an operator renames the Component in
// place. daprd closes the instance of the old name and initialises the new
// one: publishing under the new name works, the component process closes
// the old name's instance, and renaming it back brings the app's
// subscriptions back on their durables.
func TestHotReloadComponentRenamed(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		const renamed = "pubsub-renamed"
		e := newEnv(t, v)
		n := e.startNode("hotrename", hotReload(t))
		before := consumerInfo(t, e, n.AppID, stack.TopicCreated)
		clients := e.ns.NumClients()
		prefix := tag(t)
		if _, err := n.Tweet(e.ctx, prefix+" before", "", ""); err != nil {
			t.Fatal(err)
		}
		renamedAt := time.Now()
		writeResource(t, n, "pubsub.yaml", strings.Replace(n.ComponentYAML(), "name: "+stack.PubsubName+"\n", "name: "+renamed+"\n", 1))
		waitUntil(t, 30*time.Second, func() string {
			if _, err := publishVia(e.ctx, n, renamed, stack.TopicLiked, prefix+" renamed"); err != nil {
				return err.Error()
			}
			return ""
		})
		t.Logf("daprd %s publishes under the new name %s after the rename", v, time.Since(renamedAt).Round(time.Millisecond))
		status, err := publishVia(e.ctx, n, stack.PubsubName, stack.TopicLiked, prefix+" old name")
		t.Logf("a publish under the old name: %d %.200v", status, err)
		if err == nil {
			t.Errorf("daprd still publishes under the old name")
		}
		checkNATSClients(t, e, clients, "the old name's instance closed, the new one open")

		subs := logCount(n, "daprd subscribed to topic")
		writeResource(t, n, "pubsub.yaml", n.ComponentYAML())
		waitLog(t, n, "daprd subscribed to topic", subs, len(stack.AppTopics))
		posted := map[string]time.Time{prefix + " before": renamedAt}
		if _, err := n.Tweet(e.ctx, prefix+" after", "", ""); err != nil {
			t.Fatal(err)
		}
		posted[prefix+" after"] = time.Now()
		checkResumed(t, e, n, posted, renamedAt, before)
		checkNATSClients(t, e, clients, "one instance after renaming back")
	})
}
