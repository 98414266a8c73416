package jetstream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
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
	// Each old replica follows the durable: after its next pull, still
	// without the group, is refused, or after its housekeeping reads the
	// durable first, whichever comes first.
	for _, log := range logs {
		require.Eventually(t, func() bool { return strings.Contains(log.String(), "has settings other than this subscription's") }, waitFor, tick)
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

// serialLog records what the replicas of a pinned durable handle: in which
// order, by which replica, and whether two handled at the same time.
type serialLog struct {
	mu       sync.Mutex
	order    []string // replica:data, as handling started
	seen     map[string]int
	active   int
	overlaps []string // messages handled while another replica handled one
	work     time.Duration
}

func newSerialLog(work time.Duration) *serialLog {
	return &serialLog{seen: map[string]int{}, work: work}
}

// handler is replica name's handler: it takes l.work per message.
func (l *serialLog) handler(name string) pubsub.Handler {
	return func(ctx context.Context, m *pubsub.NewMessage) error {
		l.mu.Lock()
		l.active++
		if l.active > 1 {
			l.overlaps = append(l.overlaps, name+":"+string(m.Data))
		}
		l.order = append(l.order, name+":"+string(m.Data))
		l.seen[string(m.Data)]++
		l.mu.Unlock()
		select {
		case <-time.After(l.work):
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.active--
		l.mu.Unlock()
		return nil
	}
}

// has reports whether every one of data has been handled.
func (l *serialLog) has(data ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range data {
		if l.seen[d] == 0 {
			return false
		}
	}
	return true
}

func (l *serialLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order)
}

// check reports, of what was handled, the messages that came out of order
// (before one published earlier that was handled later, not counting
// repeats), those handled twice, and those handled while another was.
func (l *serialLog) check(t *testing.T) (outOfOrder, twice, overlaps []string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	last := -1
	handled := map[string]bool{}
	for _, e := range l.order {
		_, data, _ := cut(e)
		if handled[data] {
			twice = append(twice, e)
			continue
		}
		handled[data] = true
		// Published in batches a0…, then b0…: the batch, then the number.
		digits := strings.IndexAny(data, "0123456789")
		var n int
		_, err := fmt.Sscanf(data[digits:], "%d", &n)
		require.NoError(t, err)
		n += 1_000_000 * strings.Index("abcdefgh", data[:digits])
		if n < last {
			outOfOrder = append(outOfOrder, e)
		}
		last = max(last, n)
	}
	t.Logf("handled %d (%d messages): order %v", len(l.order), len(handled), l.order)
	return outOfOrder, twice, slices.Clone(l.overlaps)
}

// names lists data prefix0 … prefix(n-1).
func names(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprint(prefix, i))
	}
	return out
}

// pinnedPair subscribes two replicas, with priorityPolicy pinned and
// maxInFlight 1, to topic; each handles a message in work.
func pinnedPair(t *testing.T, url, topic string, extra map[string]string, l *serialLog) []*PubSub {
	t.Helper()
	props := map[string]string{"consumerID": "app", "priorityPolicy": "pinned", "maxInFlight": "1", "deliverAll": "true"}
	for k, v := range extra {
		props[k] = v
	}
	var out []*PubSub
	for _, name := range []string{"r1", "r2"} {
		ps, _ := open(t, url, props)
		subscribe(t, ps, topic, nil, l.handler(name))
		out = append(out, ps)
	}
	return out
}

// An operator unpins the durable (nats consumer unpin) while the pinned
// replica works through a backlog, one message at a time: every message
// arrives once, in order. The replica pinned next starts at once, while the
// one unpinned finishes the message in its hands (its maxInFlight window):
// only maxAckPending 1 keeps even that one from overlapping.
func TestPinnedUnpinnedByAnOperator(t *testing.T) {
	t.Parallel()
	for _, maxAckPending := range []string{"", "1"} {
		t.Run("maxAckPending="+maxAckPending, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			l := newSerialLog(20 * time.Millisecond)
			extra := map[string]string{}
			if maxAckPending != "" {
				extra["maxAckPending"] = maxAckPending
			}
			pinnedPair(t, ns.ClientURL(), "seq", extra, l)
			waitConsumer(t, js, "seq", "app-seq")
			publishRaw(t, js, "seq", "a", 60)
			require.Eventually(t, func() bool { return l.count() >= 10 }, waitFor, tick)
			require.NoError(t, mustStream(t, js, "seq").UnpinConsumer(ctx(t), "app-seq", metadata.PriorityGroup))
			start := time.Now()
			require.Eventually(t, func() bool { return l.has(names("a", 0, 60)...) }, waitFor, tick, "messages lost after the unpin")
			t.Logf("the backlog was handled %s after the unpin", time.Since(start).Round(10*time.Millisecond))
			outOfOrder, twice, overlaps := l.check(t)
			assert.Empty(t, outOfOrder, "out of order")
			assert.Empty(t, twice, "handled twice")
			if maxAckPending == "1" {
				assert.Empty(t, overlaps, "handled by two replicas at once")
			} else {
				assert.LessOrEqual(t, len(overlaps), 1, "more than the one message in flight overlapped: %v", overlaps)
			}
		})
	}
}

// assertSerial checks what l recorded: in order, nothing twice beyond the
// maxInFlight window (1) in flight at a change, no more than that window
// handled by two replicas at once.
func assertSerial(t *testing.T, l *serialLog) {
	t.Helper()
	outOfOrder, twice, overlaps := l.check(t)
	assert.Empty(t, outOfOrder, "out of order")
	assert.LessOrEqual(t, len(twice), 1, "more than the message in flight came twice: %v", twice)
	assert.LessOrEqual(t, len(overlaps), 1, "more than the message in flight overlapped: %v", overlaps)
}

// Admin actions on the stream or the durable of pinned replicas while they
// work through a backlog: every message that the stream still holds
// arrives, in order, one replica at a time.
func TestPinnedThroughAdminActions(t *testing.T) {
	t.Parallel()
	for _, action := range []string{"purge", "stream replaced", "consumer deleted", "consumer made again with another group"} {
		t.Run(action, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			keepAccountStore(t, js)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "seq", Subjects: []string{"seq"}})
			require.NoError(t, err)
			l := newSerialLog(20 * time.Millisecond)
			replicas := pinnedPair(t, ns.ClientURL(), "seq", map[string]string{"pinnedTTL": "30s", "autoProvision": "false"}, l)
			waitConsumer(t, js, "seq", "app-seq")
			publishRaw(t, js, "seq", "a", 40)
			require.Eventually(t, func() bool { return l.count() >= 10 }, waitFor, tick)
			before, err := consumerInfo(js, "seq", "app-seq")
			require.NoError(t, err)
			want := names("a", 0, 40) // what the stream holds after the action
			switch action {
			case "purge":
				require.NoError(t, mustStream(t, js, "seq").Purge(ctx(t)))
				want = nil
			case "stream replaced":
				cfg := streamInfo(t, js, "seq").Config
				removeStream(t, ns, js, "seq")
				_, err := js.CreateStream(ctx(t), cfg)
				require.NoError(t, err)
				want = nil
			case "consumer deleted":
				require.NoError(t, js.DeleteConsumer(ctx(t), "seq", "app-seq"))
			case "consumer made again with another group":
				// nats consumer rm, then nats consumer add with the group
				// ops, or nats consumer edit when a replica made it again
				// first.
				require.NoError(t, js.DeleteConsumer(ctx(t), "seq", "app-seq"))
				cfg := before.Config
				cfg.DeliverPolicy, cfg.OptStartSeq = natsjs.DeliverByStartSequencePolicy, before.AckFloor.Stream+1
				cfg.PriorityGroups = []string{"ops"}
				// The replicas make it again at the same time: nats-server
				// may answer a write that races theirs with a 500, and the
				// operator runs the command again.
				require.EventuallyWithT(t, func(c *assert.CollectT) {
					if _, err := js.CreateConsumer(ctx(t), "seq", cfg); err == nil {
						return
					}
					remade, err := consumerInfo(js, "seq", "app-seq")
					if !assert.NoError(c, err) {
						return
					}
					edit := remade.Config
					edit.PriorityGroups = []string{"ops"}
					_, err = js.UpdateConsumer(ctx(t), "seq", edit)
					assert.NoError(c, err, "nats consumer edit")
				}, waitFor, tick)
			}
			changed := time.Now()
			publishRaw(t, js, "seq", "b", 20)
			want = append(want, names("b", 0, 20)...)
			require.Eventually(t, func() bool { return l.has(want...) }, waitFor, tick, "messages lost")
			t.Logf("%d messages handled %s after the change", len(want), time.Since(changed).Round(10*time.Millisecond))
			if action == "consumer made again with another group" {
				// The operator made it again to start after the ack floor
				// read before the delete: what was acked after that read
				// comes again, as the operator chose.
				outOfOrder, twice, overlaps := l.check(t)
				assert.Empty(t, outOfOrder, "out of order")
				assert.LessOrEqual(t, len(overlaps), 1, "more than the message in flight overlapped: %v", overlaps)
				for _, e := range twice {
					_, data, _ := cut(e)
					var n uint64
					_, err := fmt.Sscanf(data, "a%d", &n)
					require.NoError(t, err)
					assert.Greater(t, n+1, before.AckFloor.Stream, "%s, acked before the operator read the ack floor, came twice", e)
				}
			} else {
				assertSerial(t, l)
			}
			for i, ps := range replicas {
				assert.NoError(t, ps.Ping(ctx(t)), "replica %d", i)
			}
			info, err := consumerInfo(js, "seq", "app-seq")
			require.NoError(t, err)
			t.Logf("consumer: policy %v groups %v", info.Config.PriorityPolicy, info.Config.PriorityGroups)
		})
	}
}

// A rolling update changes pinnedTTL while the pinned replica works
// through a backlog: the durable takes the new pinnedTTL, and every message
// arrives once, in order, one at a time, through the update and the old
// replica's end.
//
// The old replica ends while its app handles a message, as daprd's graceful
// shutdown finishes what the app handles. A message it had received and
// not yet handed to the app would come after newer ones, as docs/metadata.md
// says under Ordered processing; ending at another instant would make the
// order depend on the scheduler.
func TestPinnedTTLChangedInARollingUpdate(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	l := newSerialLog(20 * time.Millisecond)
	props := map[string]string{"consumerID": "app", "priorityPolicy": "pinned", "maxInFlight": "1", "deliverAll": "true", "pinnedTTL": "30s"}
	old, _ := open(t, ns.ClientURL(), props)
	ending, handling := make(chan struct{}), make(chan struct{})
	var once sync.Once
	oldHandler := l.handler("old")
	subscribe(t, old, "seq", nil, func(ctx context.Context, m *pubsub.NewMessage) error {
		select {
		case <-ending:
			once.Do(func() { close(handling) })
			<-ctx.Done() // the subscription ends while the app handles m
		default:
		}
		return oldHandler(ctx, m)
	})
	waitConsumer(t, js, "seq", "app-seq")
	publishRaw(t, js, "seq", "a", 60)
	require.Eventually(t, func() bool { return l.count() >= 10 }, waitFor, tick)

	props["pinnedTTL"] = "5s"
	updated, _ := open(t, otherPodURL(ns), props)
	subscribe(t, updated, "seq", nil, l.handler("new"))
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "seq", "app-seq")
		return err == nil && info.Config.PinnedTTL == 5*time.Second
	}, waitFor, tick, "the durable did not take the new pinnedTTL")
	close(ending)
	select {
	case <-handling:
	case <-time.After(waitFor):
		t.Fatal("the old replica handled nothing more")
	}
	require.NoError(t, old.Close())
	start := time.Now()
	publishRaw(t, js, "seq", "b", 10)
	want := append(names("a", 0, 60), names("b", 0, 10)...)
	require.Eventually(t, func() bool { return l.has(want...) }, waitFor, tick, "messages lost")
	t.Logf("the rest handled %s after the old replica closed", time.Since(start).Round(10*time.Millisecond))
	assertSerial(t, l)
}
