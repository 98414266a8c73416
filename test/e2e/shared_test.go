//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

func sharing(socketDir string) nodeOpt {
	return func(c *stack.Config) { c.SharedSocketDir = socketDir }
}

// TestTwoDaprdsShareOneComponent: two apps started the way `dapr run` starts
// them, against one component process and one Component name ("pubsub", as
// in every quickstart). Each daprd gets its own instance: both apps subscribe
// and publish and receive every tweet, each through a durable named after its
// own app id. When one daprd stops gracefully (Pause, then close), the other
// keeps receiving, and once it has exited its instance's NATS connection is
// closed.
func TestTwoDaprdsShareOneComponent(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		feed := e.newNode("feed")
		if err := feed.StartComponent(); err != nil {
			t.Fatal(err)
		}
		search := e.startNode("search", sharing(feed.SocketDir))
		// feed's daprd initialises the same Component name after search's
		// daprd has subscribed.
		if err := feed.StartDaprd(); err != nil {
			t.Fatal(err)
		}
		if err := feed.StartApp(); err != nil {
			t.Fatal(err)
		}
		if err := feed.WaitDaprdHealthy(e.ctx); err != nil {
			t.Fatal(err)
		}
		if err := feed.WaitSubscribed(e.ctx, e.js); err != nil {
			t.Fatal(err)
		}
		instances := e.ns.NumClients() // the test's own client and one per instance

		prefix := tag(t)
		texts := map[string]bool{}
		publish := func(from, to int) {
			t.Helper()
			for i := from; i < to; i++ {
				text := fmt.Sprintf("%s tweet %d", prefix, i)
				texts[text] = true
				via := feed
				if i%2 == 1 && search.Daprd != nil && !search.Daprd.Exited() {
					via = search
				}
				if _, err := via.Tweet(e.ctx, text, "", ""); err != nil {
					t.Fatal(err)
				}
			}
		}
		mine := func(r stack.Record) bool { return texts[r.Tweet().Text] }
		distinct := func(n *stack.Node) int {
			seen := map[string]bool{}
			for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
				seen[r.Tweet().Text] = true
			}
			return len(seen)
		}

		publish(0, 10)
		waitUntil(t, 30*time.Second, func() string {
			if f, s := distinct(feed), distinct(search); f < 10 || s < 10 {
				return fmt.Sprintf("feed received %d and search %d of the 10 tweets published through both", f, s)
			}
			return ""
		})

		if err := search.StopDaprd(20 * time.Second); err != nil {
			t.Logf("search's daprd stopped: %v", err)
		}
		publish(10, 20)
		waitUntil(t, 30*time.Second, func() string {
			if f := distinct(feed); f < 20 {
				return fmt.Sprintf("after search's daprd stopped, feed received %d of 20 tweets", f)
			}
			return ""
		})
		waitUntil(t, 15*time.Second, func() string {
			if n := e.ns.NumClients(); n != instances-1 {
				return fmt.Sprintf("nats-server has %d clients, want %d: the instance of the daprd that exited is still connected", n, instances-1)
			}
			return ""
		})
	})
}
