//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

func withMetadata(md map[string]string) nodeOpt {
	return func(c *stack.Config) {
		if c.ComponentMetadata == nil {
			c.ComponentMetadata = map[string]string{}
		}
		for k, v := range md {
			c.ComponentMetadata[k] = v
		}
	}
}

// TestRestartKeepsUnseenMessages: daprd restarts while a backlog waits for a
// slow app (one event at a time, 200 ms each). Of the messages the component
// held for daprd's stream when it ended, most had not reached the app yet.
// JetStream has already counted a delivery for each, so with a low maxDeliver
// giving them back would drop them. The component keeps them for the next
// subscription of the same durable instead, which gets them without a new
// delivery being counted.
//
// Asserted for maxDeliver 1 and 3, with small and large messages: every
// message reaches the app; JetStream drops none for maxDeliver; all arrive
// within 20 s of daprd being back and before the ack wait (30 s after the
// first publish) could have brought any of them back; the data arrives
// whole; nothing is dead-lettered and the durable ends with nothing
// unacknowledged. Messages delivered more than once are only logged.
func TestRestartKeepsUnseenMessages(t *testing.T) {
	const (
		backlog     = 20
		appDelay    = 200 * time.Millisecond
		ackWait     = 30 * time.Second
		maxInFlight = 10
		// handledBeforeStop is how many messages the app has had when daprd
		// is stopped.
		handledBeforeStop = 3
		// backWithin bounds the time from daprd being healthy again to the
		// arrival of the last message.
		backWithin = 20 * time.Second
	)
	cases := []struct {
		name       string
		maxDeliver int
		size       int // bytes of tweet text per message
	}{
		{"maxDeliver1-256KiB", 1, 256 << 10},
		{"maxDeliver3-16B", 3, 16},
		{"maxDeliver1-16B", 1, 16},
	}
	eachVersion(t, func(t *testing.T, v string) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				e := newEnv(t, v)
				const appID, consumerID = "unseen", "unseen-durable"
				durable := stack.ConsumerName(consumerID, stack.TopicCreated)
				n := e.newNode(appID,
					withDelay(appDelay),
					// daprd 1.14 hands each message to the app on a goroutine
					// of its own; limited to one call at a time it handles
					// them one by one, as daprd 1.18 does, and the messages
					// behind the one being handled wait unseen.
					withDaprdArgs("--app-max-concurrency", "1"),
					withMetadata(map[string]string{
						"consumerID":  consumerID,
						"maxDeliver":  strconv.Itoa(c.maxDeliver),
						"maxInFlight": strconv.Itoa(maxInFlight),
						"ackWait":     ackWait.String(),
					}))
				began := time.Now()
				if err := n.Start(e.ctx); err != nil {
					t.Fatalf("start node %s: %v", appID, err)
				}
				if err := stack.WaitConsumers(e.ctx, e.js, 90*time.Second, consumerID, stack.AppTopics...); err != nil {
					t.Fatalf("node %s: %v", appID, err)
				}
				t.Logf("node %s ready in %s (daprd %s)", appID, time.Since(began).Round(time.Millisecond), v)
				info := func() (*jetstream.ConsumerInfo, error) {
					c, err := e.js.Consumer(e.ctx, stack.Stream, durable)
					if err != nil {
						return nil, err
					}
					return c.CachedInfo(), nil
				}
				ci, err := info()
				if err != nil {
					t.Fatal(err)
				}
				if ci.Config.MaxDeliver != c.maxDeliver || ci.Config.AckWait != ackWait {
					t.Fatalf("durable %s has maxDeliver %d and ackWait %s, want %d and %s",
						durable, ci.Config.MaxDeliver, ci.Config.AckWait, c.maxDeliver, ackWait)
				}

				// JetStream announces each message it drops after maxDeliver
				// deliveries.
				var dropMu sync.Mutex
				dropped := map[uint64]uint64{} // stream sequence -> deliveries
				nc := e.js.Conn()
				adv, err := nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+stack.Stream+"."+durable, func(m *nats.Msg) {
					var a struct {
						StreamSeq  uint64 `json:"stream_seq"`
						Deliveries uint64 `json:"deliveries"`
					}
					if json.Unmarshal(m.Data, &a) == nil {
						dropMu.Lock()
						dropped[a.StreamSeq] = a.Deliveries
						dropMu.Unlock()
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = adv.Unsubscribe() })
				if err := nc.Flush(); err != nil {
					t.Fatal(err)
				}

				// The backlog, published straight to JetStream as CloudEvents.
				prefix := tag(t)
				want := map[string]bool{}
				firstPublish := time.Now()
				for i := range backlog {
					id := fmt.Sprintf("%s-%02d", prefix, i)
					text := fmt.Sprintf("%02d", i) + strings.Repeat(".", c.size-2)
					ce, err := json.Marshal(map[string]any{
						"specversion": "1.0", "id": id, "source": "nats", "type": "tweet",
						"datacontenttype": "application/json", "data": stack.TweetData{ID: id, Text: text},
					})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := e.js.Publish(e.ctx, stack.TopicCreated, ce); err != nil {
						t.Fatal(err)
					}
					want[id] = true
				}
				mine := func(r stack.Record) bool { return want[r.ID] }
				// firstSeen is when each message first reached the app.
				firstSeen := func(recs []stack.Record) map[string]time.Time {
					first := map[string]time.Time{}
					for _, r := range recs {
						if t0, ok := first[r.ID]; !ok || r.Time.Before(t0) {
							first[r.ID] = r.Time
						}
					}
					return first
				}
				poll := 100 * time.Millisecond
				if c.size > 64<<10 {
					poll = 500 * time.Millisecond // GET /received carries every message
				}

				waitUntil(t, 30*time.Second, func() string {
					if got := len(firstSeen(filter(received(t, n).Events, stack.TopicCreated, mine))); got < handledBeforeStop {
						return fmt.Sprintf("the app has had %d of %d messages, waiting for %d", got, backlog, handledBeforeStop)
					}
					return ""
				})

				stoppedAt := time.Now()
				if err := n.StopDaprd(30 * time.Second); err != nil {
					t.Errorf("daprd did not stop cleanly: %v", err)
				}
				stopTook := time.Since(stoppedAt)
				seenAtStop := len(firstSeen(filter(received(t, n).Events, stack.TopicCreated, mine)))
				if ci, err := info(); err == nil {
					t.Logf("daprd stopped in %s; the app had had %d of %d messages; the durable has %d unacknowledged and %d undelivered",
						stopTook.Round(time.Millisecond), seenAtStop, backlog, ci.NumAckPending, ci.NumPending)
				}
				restartedAt := time.Now()
				if err := n.StartDaprd(); err != nil {
					t.Fatal(err)
				}
				if err := n.WaitDaprdHealthy(e.ctx); err != nil {
					t.Fatal(err)
				}
				backAt := time.Now()
				t.Logf("daprd back in %s", backAt.Sub(restartedAt).Round(time.Millisecond))

				// Wait until every message arrived, or until none can any more:
				// the durable has nothing left to deliver and nothing
				// unacknowledged (read first: an ack follows the app's record).
				gone := false
				deadline := backAt.Add(60 * time.Second)
				for {
					ci, err := info()
					if len(firstSeen(filter(received(t, n).Events, stack.TopicCreated, mine))) == len(want) {
						break
					}
					if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 {
						gone = true
						break
					}
					if time.Now().After(deadline) {
						break
					}
					time.Sleep(poll)
				}
				waited := time.Since(backAt)
				// Later deliveries of the same messages would show up now.
				time.Sleep(2 * time.Second)

				rec := received(t, n).Events
				recs := filter(rec, stack.TopicCreated, mine)
				first := firstSeen(recs)
				var lost []string
				for id := range want {
					if _, ok := first[id]; !ok {
						lost = append(lost, id)
					}
				}
				sort.Strings(lost)
				var last time.Time
				for _, t0 := range first {
					if t0.After(last) {
						last = t0
					}
				}
				count := map[string]int{}
				for _, r := range recs {
					count[r.ID]++
				}
				var again []string
				for id, k := range count {
					if k > 1 {
						again = append(again, fmt.Sprintf("%s x%d", strings.TrimPrefix(id, prefix+"-"), k))
					}
				}
				sort.Strings(again)
				dropMu.Lock()
				drops := len(dropped)
				dropMu.Unlock()
				tookOver := 0
				for _, m := range regexp.MustCompile(`took over (\d+) messages`).FindAllStringSubmatch(n.Component.Output(), -1) {
					k, _ := strconv.Atoi(m[1])
					tookOver += k
				}
				deadLetters := filter(rec, stack.TopicDeadLetter, mine)

				t.Logf("daprd %s, maxDeliver %d, %d B each: %d published, %d had reached the app when daprd stopped, %d lost, "+
					"%d delivered more than once (%d deliveries in all) %v, %d dropped by JetStream after maxDeliver, "+
					"%d taken over by the new subscription, %d dead-lettered",
					v, c.maxDeliver, c.size, backlog, seenAtStop, len(lost), len(again), len(recs), again, drops, tookOver, len(deadLetters))
				if len(lost) == 0 {
					t.Logf("the last message arrived %s after daprd was back, %s after the first publish",
						last.Sub(backAt).Round(time.Millisecond), last.Sub(firstPublish).Round(time.Millisecond))
				}

				if len(lost) > 0 {
					how := fmt.Sprintf("after waiting %s", waited.Round(time.Millisecond))
					if gone {
						how = "and the durable has nothing left to deliver or settle"
					}
					short := make([]string, len(lost))
					for i, id := range lost {
						short[i] = strings.TrimPrefix(id, prefix+"-")
					}
					t.Errorf("%d of %d messages never reached the app (%s): %s", len(lost), backlog, how, strings.Join(short, " "))
				}
				if drops > 0 {
					t.Errorf("JetStream dropped %d messages after %d deliveries (maxDeliver)", drops, c.maxDeliver)
				}
				if len(lost) == 0 {
					if d := last.Sub(backAt); d > backWithin {
						t.Errorf("the last message arrived %s after daprd was back, want at most %s", d.Round(time.Millisecond), backWithin)
					}
					if !last.Before(firstPublish.Add(ackWait)) {
						t.Errorf("the last message arrived %s after the first publish, not before the ack wait (%s) could bring it back",
							last.Sub(firstPublish).Round(time.Millisecond), ackWait)
					}
				}
				for _, r := range recs {
					if got := len(r.Tweet().Text); got != c.size || r.Status != "SUCCESS" {
						t.Errorf("message %s reached the app with %d B of text (want %d) and was answered %s", r.ID, got, c.size, r.Status)
						break
					}
				}
				if len(deadLetters) > 0 {
					t.Errorf("%d messages went to the dead-letter topic", len(deadLetters))
				}
				if ci, err := info(); err != nil {
					t.Error(err)
				} else if ci.NumAckPending != 0 || ci.NumPending != 0 {
					t.Errorf("durable %s still has %d unacknowledged and %d undelivered messages", durable, ci.NumAckPending, ci.NumPending)
				}
			})
		}
	})
}
