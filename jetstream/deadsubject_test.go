package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// alwaysFailing is a handler that always fails, counting its calls.
func alwaysFailing(calls *atomic.Int32, why string) pubsub.Handler {
	return func(context.Context, *pubsub.NewMessage) error {
		calls.Add(1)
		return errors.New(why)
	}
}

// terminations subscribes to JetStream's advisories of terminated messages.
func terminations(t *testing.T, nc *nats.Conn) chan *nats.Msg {
	return advisories(t, nc, "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>", func(m *nats.Msg) *nats.Msg { return m })
}

// advisories subscribes to subject, and passes what seen makes of each
// advisory on.
func advisories[T any](t *testing.T, nc *nats.Conn, subject string, seen func(*nats.Msg) T) chan T {
	t.Helper()
	ch := make(chan T, 10)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) { ch <- seen(m) })
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	require.NoError(t, nc.Flush())
	return ch
}

// When the last delivery that maxDeliver allows fails, the message is
// published to deadLetterSubject with its headers and where it came from,
// and only then is the original terminated.
func TestDeadLetterSubjectAtLastDelivery(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	nc, _ := natstest.Client(t, ns)
	terminated := terminations(t, nc)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "3", "deadLetterSubject": "dead.{topic}"})
	var calls atomic.Int32
	subscribe(t, ps, "orders", nil, alwaysFailing(&calls, "cannot parse the order\nline 2"))
	dl, dead := collect()
	subscribe(t, ps, "dead.orders", nil, dl)

	ce := `{"specversion":"1.0","id":"ce-9","source":"app","type":"t","data":{"n":1}}`
	publish(t, ps, "orders", ce, map[string]string{"tenant": "t1"})

	m := recv(t, dead, waitFor)
	assert.JSONEq(t, ce, string(m.Data))
	assert.Equal(t, int32(3), calls.Load(), "every allowed delivery reached the handler")
	for k, want := range map[string]string{
		"tenant":                   "t1",
		HeaderDeadLetterSubject:    "orders",
		HeaderDeadLetterStream:     "orders",
		HeaderDeadLetterSequence:   "1",
		HeaderDeadLetterConsumer:   "app-orders",
		HeaderDeadLetterDeliveries: "3",
		HeaderDeadLetterError:      "cannot parse the order line 2",
		MetadataSubject:            "dead.orders",
	} {
		assert.Equal(t, want, m.Metadata[k], "metadata %q", k)
	}

	adv := recv(t, terminated, waitFor)
	var term struct {
		Stream   string `json:"stream"`
		Consumer string `json:"consumer"`
		Seq      uint64 `json:"stream_seq"`
		Reason   string `json:"reason"`
	}
	require.NoError(t, json.Unmarshal(adv.Data, &term))
	assert.Equal(t, "orders", term.Stream)
	assert.Equal(t, "app-orders", term.Consumer)
	assert.Equal(t, uint64(1), term.Seq)
	assert.Contains(t, term.Reason, "dead.orders")
	info := settledConsumer(t, js, "orders", "app-orders")
	assert.Equal(t, uint64(1), info.AckFloor.Stream, "the terminated message is behind the ack floor")
	nothing(t, dead, 300*time.Millisecond)
	assert.Equal(t, int32(3), calls.Load(), "no delivery after the last one")
}

// A subscription may set its own deadLetterSubject; one that the topic
// itself covers would bring failed messages back, and is refused.
func TestDeadLetterSubjectPerSubscription(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "streamName": "SHOP", "streamSubjects": "shop.>"})
	var calls atomic.Int32
	subscribe(t, ps, "shop.orders", map[string]string{"deadLetterSubject": "shop.failed.{topic}"}, alwaysFailing(&calls, "no"))
	dl, dead := collect()
	subscribe(t, ps, "shop.failed.shop.orders", nil, dl)
	publish(t, ps, "shop.orders", "o1", nil)
	m := recv(t, dead, waitFor)
	assert.Equal(t, "o1", string(m.Data))
	assert.Equal(t, "SHOP", m.Metadata[HeaderDeadLetterStream])

	for _, c := range []struct{ topic, dl string }{
		{"shop.items", "shop.items"},
		{"shop.>", "shop.dead"},
		{"shop.*", "dead.{app}"},
		{"shop.>", "{topic}.dead"},
	} {
		err := ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: c.topic, Metadata: map[string]string{"deadLetterSubject": c.dl}}, alwaysFailing(&calls, "no"))
		require.Error(t, err, "%+v", c)
		t.Log(err)
		assert.Equal(t, KindInvalid, KindOf(err), "%+v: %v", c, err)
		assert.Contains(t, err.Error(), "deadLetterSubject")
	}
}

// Without deadLetterSubject, a message whose last delivery failed is logged
// at warn level, naming it, so that nothing vanishes unseen.
func TestLastDeliveryLoggedWithoutDeadLetterSubject(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "2"})
	var calls atomic.Int32
	subscribe(t, ps, "plain", nil, alwaysFailing(&calls, "handler says no"))
	publish(t, ps, "plain", "x", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "last") }, waitFor, tick)
	line := log.String()
	for _, s := range []string{"level=warning", `topic \"plain\"`, "sequence 1", `stream \"plain\"`, "2 of maxDeliver 2", "handler says no", "deadLetterSubject"} {
		assert.Contains(t, line, s)
	}
	settledConsumer(t, js, "plain", "app-plain")
	assert.Equal(t, int32(2), calls.Load())
}

// With provisioning off and no stream for the dead-letter subject, the
// message is held, not lost: the log names the fix, and once an operator
// creates the stream the dead letter is published and the original
// terminated.
func TestDeadLetterWaitsForItsStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "WORK", Subjects: []string{"work"}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "autoProvision": "false", "deadLetterSubject": "dead.{topic}", "ackWait": "1s"})
	var calls atomic.Int32
	subscribe(t, ps, "work", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "work", "job", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "dead.work") }, waitFor, tick)
	assert.Contains(t, log.String(), "autoProvision")
	time.Sleep(1500 * time.Millisecond) // longer than ackWait: the held message must not time out
	info, err := consumerInfo(js, "WORK", "app-work")
	require.NoError(t, err)
	assert.Equal(t, 1, info.NumAckPending, "the message is held while its dead letter waits")

	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick, "the dead letter was not published")
	info = settledConsumer(t, js, "WORK", "app-work")
	assert.Equal(t, uint64(1), info.AckFloor.Stream)
	assert.Equal(t, int32(1), calls.Load())
}

// An operator replaces a stream (nats stream rm, then nats stream add), so
// its sequences start over at 1. A message of the new stream
// that fails its last delivery must reach the dead-letter stream like the
// one of the old stream at the same sequence did, not be dropped there as a
// duplicate of that one while the original is terminated.
func TestDeadLetterAfterTheStreamWasReplaced(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	jobs := natsjs.StreamConfig{Name: "jobs", Subjects: []string{"jobs"}}
	for _, cfg := range []natsjs.StreamConfig{jobs, {Name: "DEAD", Subjects: []string{"dead.>"}}} {
		_, err := js.CreateStream(ctx(t), cfg)
		require.NoError(t, err)
	}
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}", "autoProvision": "false"})
	var calls atomic.Int32
	subscribe(t, ps, "jobs", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "jobs", "first", nil)
	require.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick, "the first dead letter")
	settledConsumer(t, js, "jobs", "app-jobs")

	removeStream(t, ns, js, "jobs")
	_, err := js.CreateStream(ctx(t), jobs)
	require.NoError(t, err)
	publish(t, ps, "jobs", "second", nil)
	require.Equal(t, uint64(1), streamInfo(t, js, "jobs").State.LastSeq, "the new stream starts over at sequence 1")
	require.Eventually(t, func() bool { return calls.Load() == 2 }, waitFor, tick, "the second message was not delivered")
	info := settledConsumer(t, js, "jobs", "app-jobs")
	require.Equal(t, uint64(1), info.AckFloor.Stream, "the second message was terminated")
	assert.Equal(t, uint64(2), count(js, "DEAD"), "the second message, terminated, must be in the dead-letter stream")
}

// Two apps (consumerIDs billing and shipping) subscribe to one topic and
// share the dead-letter subject dead.{topic}. Both fail the same message on
// its last delivery: each failure is terminated in its own consumer, so each
// must be in the dead-letter stream, naming its consumer; otherwise the
// second app's failure is gone without a trace.
func TestDeadLetterOfTwoConsumersOfOneMessage(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
	require.NoError(t, err)
	props := func(app string) map[string]string {
		return map[string]string{"consumerID": app, "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"}
	}
	billing, _ := open(t, ns.ClientURL(), props("billing"))
	shipping, _ := open(t, ns.ClientURL(), props("shipping"))
	var calls atomic.Int32
	subscribe(t, billing, "orders", nil, alwaysFailing(&calls, "billing says no"))
	subscribe(t, shipping, "orders", nil, alwaysFailing(&calls, "shipping says no"))
	publish(t, billing, "orders", "o1", nil)

	require.Eventually(t, func() bool { return calls.Load() == 2 }, waitFor, tick)
	settledConsumer(t, js, "orders", "billing-orders")
	settledConsumer(t, js, "orders", "shipping-orders")
	assert.Equal(t, uint64(2), count(js, "DEAD"), "one dead letter for each consumer that terminated the message")
}

// An operator deletes the dead-letter stream (nats stream rm) after it
// took a dead letter. With autoProvision on, the next dead letter creates
// it again, as a publish to the dead-letter topic would, instead of being
// held for ever.
func TestDeadLetterAfterItsStreamWasDeleted(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	keepAccountStore(t, js)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"})
	var calls atomic.Int32
	subscribe(t, ps, "jobs", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "jobs", "first", nil)
	var dead string
	require.Eventually(t, func() bool {
		name, err := js.StreamNameBySubject(t.Context(), "dead.jobs")
		dead = name
		return err == nil && count(js, name) == 1
	}, waitFor, tick, "the first dead letter")
	settledConsumer(t, js, "jobs", "app-jobs")

	removeStream(t, ns, js, dead)
	publish(t, ps, "jobs", "second", nil)
	require.Eventually(t, func() bool { return count(js, dead) == 1 }, waitFor, tick, "the second dead letter never reached a dead-letter stream created again")
	settledConsumer(t, js, "jobs", "app-jobs")
}

// The dead-letter stream refuses the dead letter for good: its
// max_msg_size is smaller than the message (nats stream edit
// --max-msg-size). The original is held, as it should be, but then the
// subscription, with maxInFlight 1, delivers nothing more: Ping, and so the
// readiness probe, must say so, naming the dead-letter subject, as it does
// for any other problem that keeps a subscription from delivering. With a
// wider window the subscription goes on delivering, and Ping must keep
// failing all the same while the dead letter is refused, not pass again
// whenever a pull request ends, as a readiness probe would then mostly see
// a ready pod.
func TestDeadLetterRefusedForGoodFailsPing(t *testing.T) {
	t.Parallel()
	for _, maxInFlight := range []string{"1", "100"} {
		t.Run("maxInFlight="+maxInFlight, func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}, MaxMsgSize: 64})
			require.NoError(t, err)
			ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "maxInFlight": maxInFlight, "deadLetterSubject": "dead.{topic}"})
			var calls atomic.Int32
			subscribe(t, ps, "big", nil, alwaysFailing(&calls, "no"))
			publish(t, ps, "big", strings.Repeat("x", 200), nil)
			publish(t, ps, "big", "next", nil)
			require.Eventually(t, func() bool { return strings.Contains(log.String(), "dead.big") }, waitFor, tick, "the refused dead letter is logged")
			if maxInFlight == "1" {
				assert.Equal(t, int32(1), calls.Load(), "the held message keeps the next one back")
			}
			require.Eventually(t, func() bool { return ps.Ping(ctx(t)) != nil }, stuckAfter+waitShort, tick,
				"Ping passes while the subscription has delivered nothing for %s, its one place held by a dead letter that the stream refuses", stuckAfter+waitShort)
			err = ps.Ping(ctx(t))
			t.Log(err)
			assert.Contains(t, err.Error(), "dead.big")
			require.Never(t, func() bool { return ps.Ping(ctx(t)) == nil }, 3*time.Second, tick,
				"Ping passes again while the dead letter is still refused")
			assert.NotContains(t, log.String(), `topic \"big\": recovered`, "the refused dead letter was logged as recovered")
		})
	}
}

// The NATS user may not publish to the dead-letter subject, or read the
// stream that stores it ($JS.API.STREAM.INFO.<stream>). NATS drops such a
// publish or API request without an answer and tells only nats.go's error
// handler, so every attempt waits deadLetterTimeout (5 s) and reports
// "context deadline exceeded", which Ping repeats only after stuckAfter. As
// for a publish or a subscription's consumer, the problem must name the
// refused subject and the permission to grant, and fail Ping (and so the
// readiness probe) as soon as it is known, since retrying cannot fix it.
func TestDeadLetterDeniedPermissionFailsPing(t *testing.T) {
	t.Parallel()
	for _, denied := range []string{"dead.work", "$JS.API.STREAM.INFO.DEAD"} {
		t.Run(denied, func(t *testing.T) {
			t.Parallel()
			ns := natstest.Start(t, func(o *server.Options) {
				o.Users = []*server.User{{Username: "app", Password: "secret", Permissions: &server.Permissions{
					Publish: &server.SubjectPermission{Deny: []string{denied}},
				}}}
			})
			ps, _ := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"})
			_, err := ps.js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
			require.NoError(t, err)
			var calls atomic.Int32
			subscribe(t, ps, "work", nil, alwaysFailing(&calls, "no"))
			publish(t, ps, "work", "job", nil)
			require.Eventually(t, func() bool { return calls.Load() == 1 }, waitFor, tick, "the message was not delivered")
			failed := time.Now()
			var pingErr error
			require.Eventually(t, func() bool { pingErr = ps.Ping(ctx(t)); return pingErr != nil }, deadLetterTimeout+stuckAfter+waitShort, tick,
				"Ping passes while the dead letter is refused: each attempt reports \"context deadline exceeded\", which the pull clears as recovered")
			t.Logf("after %s: %v", time.Since(failed).Round(time.Second), pingErr)
			assert.Contains(t, pingErr.Error(), "NATS does not allow this connection to publish to "+strconv.Quote(denied), "Ping does not name the refused subject")
			assert.Less(t, time.Since(failed), deadLetterTimeout+stuckAfter/2, "Ping failed only once the problem lasted stuckAfter, as for one that retrying may fix")
		})
	}
}

// An app's error text longer than the Dead-Letter-Error header keeps, in a
// language written with more than one byte a character, is cut to the
// header's bound between characters: a header value cut inside a UTF-8
// sequence is not valid text, and protobuf, which carries the metadata to
// daprd and to gRPC apps, refuses strings that are not valid UTF-8.
func TestDeadLetterErrorCutBetweenCharacters(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}"})
	var calls atomic.Int32
	why := "x" + strings.Repeat("é", maxDeadLetterError)
	subscribe(t, ps, "intl", nil, alwaysFailing(&calls, why))
	dl, dead := collect()
	subscribe(t, ps, "dead.intl", nil, dl)
	publish(t, ps, "intl", "o1", nil)
	m := recv(t, dead, waitFor)
	text := m.Metadata[HeaderDeadLetterError]
	assert.True(t, strings.HasPrefix(text, "xéé"), "%.20q", text)
	assert.True(t, utf8.ValidString(text), "Dead-Letter-Error is not valid UTF-8; it ends in %q", text[max(0, len(text)-8):])
}

// With the component's deadLetterSubject dead.{topic}, an app subscribes to
// its dead letters with the topic dead.>, which covers dead.dead.x, and is
// refused. The error must name a fix that works: not dead.{topic}, the very
// subject refused, but a subject outside the topic or turning dead letters
// off for this subscription (subscription metadata deadLetterSubject: "",
// which is accepted).
func TestDeadLetterLoopRefusalNamesAFixThatWorks(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deadLetterSubject": "dead.{topic}"})
	h, _ := collect()
	err := ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: "dead.>"}, h)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindInvalid, KindOf(err))
	assert.NotContains(t, err.Error(), "such as dead.{topic}", "the fix offered is the subject refused")
	assert.Contains(t, err.Error(), `""`, "the error does not say that deadLetterSubject \"\" in the subscription metadata turns dead letters off for it")
	require.NoError(t, ps.Subscribe(ctx(t), pubsub.SubscribeRequest{Topic: "dead.>", Metadata: map[string]string{"deadLetterSubject": ""}}, h))
}

// failingWhenReleased is a handler that says on reached when it has a
// message, and fails it once release is closed: the test changes NATS
// while the last delivery is in the app's hands.
func failingWhenReleased() (h pubsub.Handler, reached chan string, release chan struct{}) {
	reached, release = make(chan string, 10), make(chan struct{})
	return func(ctx context.Context, m *pubsub.NewMessage) error {
		reached <- string(m.Data)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return errors.New("the app failed it")
	}, reached, release
}

// deadLetterHeld checks, for longer than ackWait (1 s), that the original of
// a dead letter that cannot be published is neither terminated nor given
// up: it stays pending, and JetStream says nothing of it.
func deadLetterHeld(t *testing.T, js natsjs.JetStream, terminated <-chan *nats.Msg, stream, consumer string) {
	t.Helper()
	nothing(t, terminated, 1500*time.Millisecond)
	info, err := consumerInfo(js, stream, consumer)
	require.NoError(t, err)
	require.Equal(t, 1, info.NumAckPending, "the original is held while its dead letter waits")
}

// The dead-letter stream is full and discards new messages (nats stream
// edit --max-msgs --discard new): JetStream refuses the dead letter. The
// original is held, not terminated; the log names the subject, the stream
// and the limit; once the operator makes room (nats stream purge), the dead
// letter is stored as documented and only then the original terminated.
func TestDeadLetterWaitsForRoomInAFullStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	nc, _ := natstest.Client(t, ns)
	terminated := terminations(t, nc)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "WORK", Subjects: []string{"work"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}, MaxMsgs: 1, Discard: natsjs.DiscardNew})
	require.NoError(t, err)
	_, err = js.Publish(ctx(t), "dead.earlier", []byte("filler"))
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "autoProvision": "false", "deadLetterSubject": "dead.{topic}", "ackWait": "1s"})
	var calls atomic.Int32
	subscribe(t, ps, "work", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "work", "job", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "dead.work") }, waitFor, tick, "the refused dead letter is not logged")
	deadLetterHeld(t, js, terminated, "WORK", "app-work")
	for _, s := range []string{"maximum messages", `\"DEAD\"`} {
		assert.Contains(t, log.String(), s)
	}

	t.Log(lineWith(log.String(), "held until it is stored there"))

	require.NoError(t, mustStream(t, js, "DEAD").Purge(ctx(t)))
	made := time.Now()
	raw := deadLetterIn(t, js, "DEAD", "dead.work")
	t.Logf("dead letter stored %s after the purge", time.Since(made).Round(10*time.Millisecond))
	recv(t, terminated, waitFor)
	info := settledConsumer(t, js, "WORK", "app-work")
	assert.Equal(t, uint64(1), info.AckFloor.Stream)
	assert.Equal(t, int32(1), calls.Load())
	assert.Equal(t, "job", string(raw.Data))
	assert.Equal(t, "1", raw.Header.Get(HeaderDeadLetterDeliveries))
}

// deadLetterIn waits for stream to store a message on subject, and
// returns it.
func deadLetterIn(t *testing.T, js natsjs.JetStream, stream, subject string) *natsjs.RawStreamMsg {
	t.Helper()
	var raw *natsjs.RawStreamMsg
	require.Eventually(t, func() bool {
		st, err := js.Stream(t.Context(), stream)
		if err == nil {
			raw, err = st.GetLastMsgForSubject(t.Context(), subject)
		}
		return err == nil
	}, deadLetterTimeout+deadLetterRetryMax+waitFor, tick, "no dead letter on %q in stream %q", subject, stream)
	return raw
}

// lineWith is the last line of log that holds s.
func lineWith(log, s string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

func mustStream(t *testing.T, js natsjs.JetStream, name string) natsjs.Stream {
	t.Helper()
	st, err := js.Stream(ctx(t), name)
	require.NoError(t, err)
	return st
}

// While a message is on its last delivery, an operator replaces the
// dead-letter stream by one that does not take the dead-letter subject
// (nats stream rm DEAD; nats stream add DEAD --subjects other.>). The
// original is held, not terminated. With autoProvision off the log names
// the subject and the fix, and once the operator adds the subject, the
// dead letter is stored there; with autoProvision on, the component makes
// a stream take it.
func TestDeadLetterStreamReplacedDuringTheLastDelivery(t *testing.T) {
	t.Parallel()
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprint("autoProvision=", auto), func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			nc, _ := natstest.Client(t, ns)
			terminated := terminations(t, nc)
			dead := natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}}
			for _, cfg := range []natsjs.StreamConfig{{Name: "WORK", Subjects: []string{"work"}}, dead} {
				_, err := js.CreateStream(ctx(t), cfg)
				require.NoError(t, err)
			}
			ps, log := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "maxDeliver": "1", "autoProvision": fmt.Sprint(auto), "deadLetterSubject": "dead.{topic}", "ackWait": "1s"})
			h, reached, release := failingWhenReleased()
			subscribe(t, ps, "work", nil, h)
			// The component knows the dead-letter stream before the change.
			publish(t, ps, "dead.work", "known", nil)
			publish(t, ps, "work", "job", nil)
			require.Equal(t, "job", recv(t, reached, waitFor))

			removeStream(t, ns, js, "DEAD")
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"other.>"}})
			require.NoError(t, err)
			close(release)

			if !auto {
				require.Eventually(t, func() bool { return strings.Contains(log.String(), "held until it is stored there") }, waitFor, tick, "the refused dead letter is not logged")
				deadLetterHeld(t, js, terminated, "WORK", "app-work")
				assert.Contains(t, log.String(), "autoProvision")
				t.Log(lineWith(log.String(), "held until it is stored there"))
				dead.Subjects = []string{"other.>", "dead.>"}
				_, err = js.UpdateStream(ctx(t), dead)
				require.NoError(t, err)
			}
			var where string
			require.Eventually(t, func() bool {
				name, err := js.StreamNameBySubject(t.Context(), "dead.work")
				where = name
				return err == nil && count(js, name) == 1
			}, waitFor, tick, "the dead letter was not stored")
			recv(t, terminated, waitFor)
			settledConsumer(t, js, "WORK", "app-work")
			raw, err := mustStream(t, js, where).GetLastMsgForSubject(ctx(t), "dead.work")
			require.NoError(t, err)
			assert.Equal(t, "job", string(raw.Data))
			assert.Equal(t, "WORK", raw.Header.Get(HeaderDeadLetterStream))
		})
	}
}

// The NATS user may not publish to the dead-letter subject. The original
// is held, not terminated; once the operator grants the permission (and
// reloads nats-server's config), the dead letter is stored and the
// original terminated.
func TestDeadLetterStoredOncePermissionIsGranted(t *testing.T) {
	t.Parallel()
	var opts *server.Options
	users := func(deny ...string) []*server.User {
		return []*server.User{{Username: "app", Password: "secret", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
		}}}
	}
	ns := natstest.Start(t, func(o *server.Options) { o.Users = users("dead.work"); opts = o })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("app", "secret"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	terminated := terminations(t, nc)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
	require.NoError(t, err)
	ps, log := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "secret", "consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}", "ackWait": "1s"})
	var calls atomic.Int32
	subscribe(t, ps, "work", nil, alwaysFailing(&calls, "no"))
	publish(t, ps, "work", "job", nil)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "held until it is stored there") }, deadLetterTimeout+waitShort, tick, "the refused dead letter is not logged")
	deadLetterHeld(t, js, terminated, "work", "app-work")
	line := lineWith(log.String(), "held until it is stored there")
	t.Log(line)
	assert.Contains(t, line, `NATS does not allow this connection to publish to \"dead.work\"`)
	assert.Contains(t, line, `grant the NATS user publish permission for \"dead.work\"`, "the fix named is not the subject refused")

	granted := *opts
	granted.Users = users()
	require.NoError(t, ns.ReloadOptions(&granted))
	made := time.Now()
	deadLetterIn(t, js, "DEAD", "dead.work")
	t.Logf("dead letter stored %s after the permission was granted", time.Since(made).Round(10*time.Millisecond))
	recv(t, terminated, waitFor)
	settledConsumer(t, js, "work", "app-work")
	assert.Equal(t, int32(1), calls.Load())
}

// maxDeliveries subscribes to JetStream's advisories of messages it stopped
// delivering because maxDeliver ran out, and notes when each arrived.
func maxDeliveries(t *testing.T, nc *nats.Conn) chan time.Time {
	return advisories(t, nc, abandonedPrefix+">", func(*nats.Msg) time.Time { return time.Now() })
}

// The only replica holds a message whose last delivery failed, because the
// dead-letter stream refuses its dead letter, and shuts down: it gives the
// message back to JetStream, which will not deliver it again. An instance
// of the same consumer started later, whether the operator made room for
// the dead letter before it started or while it runs, must still store the
// dead letter: JetStream announces that it gave up on the message only when
// the consumer is next asked for messages, and the new instance listens for
// that before it asks.
func TestDeadLetterHeldAtShutdownStoredByTheNextInstance(t *testing.T) {
	t.Parallel()
	for _, fixed := range []string{"before", "after"} {
		t.Run("room made "+fixed+" the next instance starts", func(t *testing.T) {
			t.Parallel()
			ns, js := startNATS(t)
			nc, _ := natstest.Client(t, ns)
			gaveUp := maxDeliveries(t, nc)
			_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "WORK", Subjects: []string{"work"}})
			require.NoError(t, err)
			_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}, MaxMsgs: 1, Discard: natsjs.DiscardNew})
			require.NoError(t, err)
			_, err = js.Publish(ctx(t), "dead.earlier", []byte("filler"))
			require.NoError(t, err)
			props := map[string]string{"consumerID": "app", "maxDeliver": "1", "autoProvision": "false", "deadLetterSubject": "dead.{topic}", "ackWait": "1s"}
			old, log := open(t, ns.ClientURL(), props)
			var calls atomic.Int32
			subscribe(t, old, "work", nil, alwaysFailing(&calls, "no"))
			publish(t, old, "work", "job", nil)
			require.Eventually(t, func() bool { return strings.Contains(log.String(), "held until it is stored there") }, waitFor, tick, "the refused dead letter is not logged")
			require.NoError(t, old.Close())
			closed := time.Now()
			// Past ackWait, JetStream still says nothing: nobody asks for
			// messages.
			nothing(t, gaveUp, 2500*time.Millisecond)

			if fixed == "before" {
				require.NoError(t, mustStream(t, js, "DEAD").Purge(ctx(t)))
			}
			next, nextLog := open(t, ns.ClientURL(), props)
			subscribe(t, next, "work", nil, alwaysFailing(&calls, "no"))
			started := time.Now()
			if fixed == "after" {
				require.Eventually(t, func() bool { return strings.Contains(nextLog.String(), "which JetStream stopped delivering") }, waitFor, tick, "the next instance does not try to dead-letter the message")
				require.NoError(t, mustStream(t, js, "DEAD").Purge(ctx(t)))
			}
			raw := deadLetterIn(t, js, "DEAD", "dead.work")
			announced := recv(t, gaveUp, waitFor)
			t.Logf("JetStream announced giving up %s after the shutdown, %s after the next subscription began",
				announced.Sub(closed).Round(time.Millisecond), announced.Sub(started).Round(time.Millisecond))
			assert.Equal(t, "job", string(raw.Data))
			assert.Equal(t, "1", raw.Header.Get(HeaderDeadLetterSequence))
			assert.Equal(t, int32(1), calls.Load(), "the message was delivered again")
			settledConsumer(t, js, "WORK", "app-work")
		})
	}
}
