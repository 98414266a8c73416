package jetstream

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tagged collects messages with the name of the replica that got them.
func tagged(name string, ch chan<- string) pubsub.Handler {
	return func(_ context.Context, m *pubsub.NewMessage) error {
		ch <- name + ":" + string(m.Data)
		return nil
	}
}

// With priorityPolicy pinned, one replica receives everything, in order;
// when it goes away, another takes over after pinnedTTL.
func TestPinnedReplicas(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	props := map[string]string{"consumerID": "app", "priorityPolicy": "pinned", "pinnedTTL": "2s", "deliverAll": "true"}
	got := make(chan string, 100)
	replicas := map[string]*PubSub{}
	for _, name := range []string{"r1", "r2"} {
		ps, _ := open(t, ns.ClientURL(), props)
		replicas[name] = ps
		subscribe(t, ps, "seq", nil, tagged(name, got))
	}
	for i := range 20 {
		publish(t, replicas["r1"], "seq", fmt.Sprint(i), nil)
	}
	var pinned string
	for i := range 20 {
		m := recv(t, got, waitFor)
		name, data, _ := cut(m)
		if pinned == "" {
			pinned = name
		}
		assert.Equal(t, pinned, name, "message %d went to another replica", i)
		assert.Equal(t, fmt.Sprint(i), data, "out of order")
	}
	info, err := consumerInfo(js, "seq", "app-seq")
	require.NoError(t, err)
	assert.Equal(t, natsjs.PriorityPolicyPinned, info.Config.PriorityPolicy)
	require.Len(t, info.PriorityGroups, 1)
	assert.NotEmpty(t, info.PriorityGroups[0].PinnedClientID)

	// The pinned replica goes away; the other takes over.
	require.NoError(t, replicas[pinned].Close())
	other := "r1"
	if pinned == "r1" {
		other = "r2"
	}
	start := time.Now()
	publish(t, replicas[other], "seq", "after", nil)
	m := recv(t, got, waitFor)
	assert.Equal(t, other+":after", m)
	t.Logf("%s took over %s after %s went away", other, time.Since(start).Round(100*time.Millisecond), pinned)
}

// With priorityPolicy overflow, a standby replica (minPending) receives only
// while the consumer has at least that many messages pending.
func TestOverflowStandby(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	got := make(chan string, 200)
	standby, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "priorityPolicy": "overflow", "minPending": "20", "deliverAll": "true"})
	subscribe(t, standby, "load", nil, tagged("standby", got))
	for i := range 5 {
		publish(t, standby, "load", fmt.Sprint(i), nil)
	}
	nothing(t, got, 1500*time.Millisecond)
	for i := 5; i < 40; i++ {
		publish(t, standby, "load", fmt.Sprint(i), nil)
	}
	m := recv(t, got, waitFor)
	assert.Contains(t, m, "standby:")

	primary, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "priorityPolicy": "overflow", "deliverAll": "true"})
	subscribe(t, primary, "load", nil, tagged("primary", got))
	seen := map[string]bool{}
	for !seen["primary"] {
		name, _, _ := cut(recv(t, got, waitFor))
		seen[name] = true
	}
}

func cut(m string) (string, string, bool) { return strings.Cut(m, ":") }

// A rolling update that turns priorityPolicy pinned on for an existing
// durable: the durable gets the priority group, and the replicas that still
// run without it follow the durable as JetStream has it.
func TestPinnedAddedToExistingDurable(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	got := make(chan string, 100)
	old, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
	subscribe(t, old, "roll", nil, tagged("old", got))
	publish(t, old, "roll", "0", nil)
	assert.Equal(t, "old:0", recv(t, got, waitFor))

	updated, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "pinned", "pinnedTTL": "2s"})
	subscribe(t, updated, "roll", nil, tagged("new", got))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.PriorityPolicy == natsjs.PriorityPolicyPinned
	}, waitFor, tick, "the durable did not get the priority policy")

	// Every message still arrives once, at one replica at a time.
	for i := 1; i <= 20; i++ {
		publish(t, old, "roll", fmt.Sprint(i), nil)
	}
	seen := map[string]bool{}
	for len(seen) < 20 {
		_, data, _ := cut(recv(t, got, waitFor))
		assert.False(t, seen[data], "message %s came twice", data)
		seen[data] = true
	}
}

// A rolling update that turns priorityPolicy pinned on while three old
// replicas still run without it: every message arrives, and once the old
// replicas follow the durable, every replica is healthy again (Ping), the
// ones waiting in line as much as the pinned one.
func TestPinnedAddedKeepsWaitingReplicasHealthy(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	got := make(chan string, 100)
	replicas := map[string]*PubSub{}
	var logs []*logBuffer
	for _, name := range []string{"old1", "old2", "old3"} {
		ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true"})
		subscribe(t, ps, "roll", nil, tagged(name, got))
		replicas[name] = ps
		logs = append(logs, log)
	}
	publish(t, replicas["old1"], "roll", "0", nil)
	recv(t, got, waitFor)

	updated, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "pinned", "pinnedTTL": "2s"})
	subscribe(t, updated, "roll", nil, tagged("new", got))
	replicas["new"] = updated
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.PriorityPolicy == natsjs.PriorityPolicyPinned
	}, waitFor, tick, "the durable did not get the priority policy")

	for i := 1; i <= 20; i++ {
		publish(t, updated, "roll", fmt.Sprint(i), nil)
	}
	seen := map[string]bool{}
	for len(seen) < 20 {
		_, data, _ := cut(recv(t, got, waitFor))
		seen[data] = true
	}
	// The old replicas' next pull, still without the group, is refused.
	for _, log := range logs {
		require.Eventually(t, func() bool { return strings.Contains(log.String(), "Priority Group missing") }, waitFor, tick)
	}
	// A refused pull that was followed at once is no problem that lasts:
	// no replica reports one, past the time Ping takes a problem to last.
	c := ctx(t)
	var wg sync.WaitGroup
	for name, ps := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var failed atomic.Value
			if !assert.Never(t, func() bool {
				err := ps.Ping(c)
				if err != nil {
					failed.Store(err.Error())
				}
				return err != nil
			}, stuckAfter+2*time.Second, 100*time.Millisecond, "replica %s reports a problem", name) {
				t.Logf("replica %s: Ping: %v", name, failed.Load())
			}
		}()
	}
	wg.Wait()
}

// In a rolling update of pinned replicas, the pinned old replica is closed
// (shut down in order, not killed): a waiting replica takes over at once,
// not only after pinnedTTL, which is for replicas that die.
func TestPinnedReplicaClosedHandsOverThePin(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	got := make(chan string, 100)
	props := map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "pinned"}
	old, _ := open(t, ns.ClientURL(), props)
	subscribe(t, old, "roll", nil, tagged("old", got))
	publish(t, old, "roll", "0", nil)
	require.Equal(t, "old:0", recv(t, got, waitFor))

	updated, log := open(t, otherPodURL(ns), props)
	subscribe(t, updated, "roll", nil, tagged("new", got))
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "subscribed to topic") }, waitFor, tick)
	require.NoError(t, old.Close())

	start := time.Now()
	for i := 1; i <= 10; i++ {
		publish(t, updated, "roll", fmt.Sprint(i), nil)
	}
	for i := 1; i <= 10; i++ {
		require.Equal(t, fmt.Sprint("new:", i), recv(t, got, waitFor))
	}
	t.Logf("the new replica took over %s after the pinned one closed", time.Since(start).Round(100*time.Millisecond))
}

// A rolling update turns priorityPolicy pinned on. An old replica that
// subscribes again meanwhile (its daprd restarted) sets the durable back to
// its own metadata. The new replicas follow the durable, and each says once
// that its settings differ and why, rather than setting its own back, which
// the old one would undo in turn.
func TestDurableSetBackByAnOldReplicaIsReported(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	got := make(chan string, 100)
	updated, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "priorityPolicy": "pinned"})
	subscribe(t, updated, "roll", nil, tagged("new", got))
	waitConsumer(t, js, "roll", "app-roll")

	old, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app"})
	subscribe(t, old, "roll", nil, tagged("old", got))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.PriorityPolicy == natsjs.PriorityPolicyNone
	}, waitFor, tick, "the old replica did not set the durable back")
	publish(t, updated, "roll", "m", nil)
	recv(t, got, waitFor)
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), "priorityPolicy none (this subscription: pinned)")
	}, waitFor+refreshIdle, tick, "the new replica did not report the difference")
	require.NoError(t, updated.Ping(ctx(t)), "a difference is no failure")
	require.Equal(t, 1, strings.Count(log.String(), "has settings other than this subscription's"))
}

// A rollback of a rolling update that turned priorityPolicy pinned on: the
// replicas of the previous version (without a priority policy) set the
// durable back to none, and the pinned replica of the rolled-back version
// goes away. What is published then must reach the remaining replicas at
// once, not only after the pin JetStream still keeps runs out.
func TestPinnedRemovedInARollbackKeepsDelivering(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	got := make(chan string, 100)
	pinned, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "pinned"})
	subscribe(t, pinned, "roll", nil, tagged("pinned", got))
	publish(t, pinned, "roll", "0", nil)
	require.Equal(t, "pinned:0", recv(t, got, waitFor))

	old, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app", "deliverAll": "true"})
	subscribe(t, old, "roll", nil, tagged("old", got))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.PriorityPolicy == natsjs.PriorityPolicyNone
	}, waitFor, tick, "the rolled-back replica did not set the durable back")
	require.NoError(t, pinned.Close())

	start := time.Now()
	for i := 1; i <= 10; i++ {
		publish(t, old, "roll", fmt.Sprint(i), nil)
	}
	for i := 1; i <= 10; i++ {
		require.Equal(t, fmt.Sprint("old:", i), recv(t, got, waitShort), "delivery stalled after the rollback")
	}
	t.Logf("the rolled-back replica delivered %s after the pinned one closed", time.Since(start).Round(100*time.Millisecond))
}

// A rolling update from priorityPolicy pinned to overflow: the new replica
// sets the durable to overflow while an old replica, still running, holds
// the pin. Once the old replica follows the durable (it logs the
// difference), both pull as the durable has it, without a pin, and what is
// published must reach one of them at once.
func TestPinnedToOverflowKeepsDelivering(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	got := make(chan string, 100)
	old, oldLog := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "pinned"})
	subscribe(t, old, "roll", nil, tagged("old", got))
	publish(t, old, "roll", "0", nil)
	require.Equal(t, "old:0", recv(t, got, waitFor))

	updated, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app", "deliverAll": "true", "priorityPolicy": "overflow"})
	subscribe(t, updated, "roll", nil, tagged("new", got))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.PriorityPolicy == natsjs.PriorityPolicyOverflow
	}, waitFor, tick, "the new replica did not set the durable to overflow")
	publish(t, updated, "roll", "1", nil)
	recv(t, got, waitFor)
	require.Eventually(t, func() bool {
		return strings.Contains(oldLog.String(), "priorityPolicy overflow (this subscription: pinned)")
	}, waitFor, tick, "the old replica did not follow the durable")

	start := time.Now()
	for i := 2; i <= 10; i++ {
		publish(t, updated, "roll", fmt.Sprint(i), nil)
		_, data, _ := cut(recv(t, got, waitShort))
		require.Equal(t, fmt.Sprint(i), data)
	}
	t.Logf("9 messages delivered in %s once the old replica followed the durable", time.Since(start).Round(100*time.Millisecond))
}
