package jetstream

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeadLetterInSameStream: daprd sends a message its app dropped to the
// dead-letter topic by publishing the delivery's data with the delivery's
// metadata (msgId included). With both topics in one stream, the dead letter
// must not be discarded as a duplicate of the original (found by the e2e
// tests against daprd).
func TestDeadLetterInSameStream(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{
		"consumerID": "app", "streamName": "S", "streamSubjects": "S.>",
	})
	h, got := collect()
	subscribe(t, ps, "S.orders", nil, h)
	dl, dead := collect()
	subscribe(t, ps, "S.dead", nil, dl)

	ce := `{"specversion":"1.0","id":"ce-1","source":"app","type":"t","data":{"n":1}}`
	publish(t, ps, "S.orders", ce, nil)
	m := recv(t, got, waitFor)
	require.Equal(t, "ce-1", m.Metadata[MetadataMsgID])

	// What daprd's sendToDeadLetter does.
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{
		PubsubName: "test", Topic: "S.dead", Data: m.Data, Metadata: m.Metadata, ContentType: m.ContentType,
	}))
	d := recv(t, dead, waitFor)
	assert.JSONEq(t, ce, string(d.Data))
	assert.Equal(t, "S.dead", d.Metadata[MetadataSubject])
	assert.Equal(t, uint64(2), msgCount(t, js, "S"))

	// A retried dead-letter publish is still de-duplicated.
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{
		PubsubName: "test", Topic: "S.dead", Data: m.Data, Metadata: m.Metadata,
	}))
	assert.Equal(t, uint64(2), msgCount(t, js, "S"))
}

// otherPodURL is the server's URL spelled another way, so that an instance
// opened with it does not share the process-wide handover desk with one
// opened with ns.ClientURL(): as two pods of one app, not two daprds of one
// component process.
func otherPodURL(ns *server.Server) string {
	return strings.Replace(ns.ClientURL(), "127.0.0.1", "localhost", 1)
}

// A rolling update adds deadLetterSubject and lowers maxDeliver while old
// replicas, without a dead-letter subject, hold failing messages. JetStream
// then stops delivering them and says so in one advisory each. The replicas
// with a dead-letter subject must get every one of those advisories, whatever
// the old ones do with theirs, so that each message reaches the dead-letter
// subject exactly once.
func TestDeadLetterSubjectAddedInARollingUpdate(t *testing.T) {
	t.Parallel()
	const n = 6
	ns, js := startNATS(t)
	third := make(chan string, 100)
	release := make(chan struct{})
	old, _ := open(t, otherPodURL(ns), map[string]string{"consumerID": "app", "deliverAll": "true", "maxDeliver": "10", "concurrency": "parallel"})
	subscribe(t, old, "roll", nil, func(ctx context.Context, m *pubsub.NewMessage) error {
		if m.Metadata[MetadataDeliveries] == "3" {
			third <- string(m.Data)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return fmt.Errorf("poison")
	})
	for i := range n {
		publish(t, old, "roll", fmt.Sprint("poison", i), nil)
	}
	for range n {
		recv(t, third, waitFor)
	}

	updated, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app", "deliverAll": "true", "maxDeliver": "2", "deadLetterSubject": "dead.{topic}"})
	dead, deadCh := collect()
	subscribe(t, updated, "dead.roll", map[string]string{"consumerID": "dlq"}, dead)
	subscribe(t, updated, "roll", nil, func(context.Context, *pubsub.NewMessage) error { return nil })
	require.Eventually(t, func() bool {
		info, err := consumerInfo(js, "roll", "app-roll")
		return err == nil && info.Config.MaxDeliver == 2
	}, waitFor, tick, "the durable was not updated")
	close(release)
	seen := map[string]bool{}
	for len(seen) < n {
		m := recv(t, deadCh, waitFor)
		require.False(t, seen[string(m.Data)], "%s dead-lettered twice", m.Data)
		seen[string(m.Data)] = true
	}
	nothing(t, deadCh, 500*time.Millisecond)
}

// A last delivery that fails while NATS is away is dead-lettered once NATS is
// back, and the original terminated; that must happen as soon as NATS is
// back, since the message holds its place in the window meanwhile: with
// maxInFlight 1 (ordered processing) the topic delivers nothing else until
// then.
func TestDeadLetterSoonAfterAnOutage(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "DEAD", Subjects: []string{"dead.>"}})
	require.NoError(t, err)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{
		"consumerID": "app", "maxDeliver": "1", "deadLetterSubject": "dead.{topic}", "maxInFlight": "1", "reconnectWait": "100ms",
	})
	failing, release := make(chan struct{}), make(chan struct{})
	good := make(chan string, 10)
	subscribe(t, ps, "dlout", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		if string(m.Data) == "bad" {
			close(failing)
			<-release
			return fmt.Errorf("poison")
		}
		good <- string(m.Data)
		return nil
	})
	publish(t, ps, "dlout", "bad", nil)
	closedWithin(t, failing, waitFor, "the delivery of bad")

	px.cut()
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	close(release) // the last allowed delivery fails while NATS is away
	_, err = js.Publish(ctx(t), "dlout", []byte("after"))
	require.NoError(t, err)
	time.Sleep(7 * time.Second) // the outage itself, not a wait for a condition
	px.restore()
	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, 10*time.Millisecond)
	back := time.Now()

	require.Eventually(t, func() bool { return count(js, "DEAD") == 1 }, waitFor, tick, "no dead letter after the outage")
	dlAfter := time.Since(back)
	assert.Equal(t, "after", recv(t, good, waitFor))
	deliveredAfter := time.Since(back)
	t.Logf("after NATS came back: dead letter stored after %s, next message delivered after %s", dlAfter, deliveredAfter)
	assert.Less(t, dlAfter, 1500*time.Millisecond, "the dead letter waited long after NATS came back")
	assert.Less(t, deliveredAfter, 1500*time.Millisecond, "delivery resumed late after NATS came back")
	info := settledConsumer(t, js, "dlout", "app-dlout")
	assert.Equal(t, uint64(2), info.AckFloor.Stream)
}
