package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// pubAcksOn is a JetStream context on a real nats-server whose asynchronous
// publishes answer to a pubAcks, with a stream on pa.>.
func pubAcksOn(t *testing.T) (*pubAcks, natsjs.JetStream) {
	t.Helper()
	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	acks := newPubAcks()
	js, err := natsjs.New(nc, acks.options()...)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "PA", Subjects: []string{"pa.>"}})
	require.NoError(t, err)
	return acks, js
}

func waitingFor(a *pubAcks) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.waiting)
}

func TestPubAcksHandEachAnswerToItsEntry(t *testing.T) {
	acks, js := pubAcksOn(t)
	c, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	call := acks.newCall(3)
	defer call.end()
	// The last has no stream: nats.go tries it again twice, then fails it.
	for i, subject := range []string{"pa.one", "pa.two", "nowhere.three"} {
		require.NoError(t, call.send(c, js, i, nats.NewMsg(subject)))
	}
	call.awaitAll(c)
	require.NoError(t, c.Err(), "every answer came")
	for i, want := range []uint64{1, 2} {
		ack, err := call.result(c, js.Conn(), i)
		require.NoError(t, err)
		assert.Equal(t, "PA", ack.Stream)
		assert.Equal(t, want, ack.Sequence)
	}
	_, err := call.result(c, js.Conn(), 2)
	assert.ErrorIs(t, err, natsjs.ErrNoStreamResponse)
	assert.Zero(t, waitingFor(acks))
}

func TestPubAcksDropAnAnswerNobodyWaitsFor(t *testing.T) {
	acks, js := pubAcksOn(t)
	// No stream: the answer comes only after nats.go's two tries again,
	// 250 ms apart, well after this call gave up.
	c, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	call := acks.newCall(1)
	require.NoError(t, call.send(c, js, 0, nats.NewMsg("nowhere.late")))
	_, err := call.await(c, js.Conn(), 0)
	assert.True(t, errors.Is(err, errAckOverdue) && errors.Is(err, context.DeadlineExceeded), "got %v", err)
	call.end()
	assert.Zero(t, waitingFor(acks), "an ended call leaves nothing behind")
	require.Eventually(t, func() bool { return js.PublishAsyncPending() == 0 }, waitFor, tick, "nats.go answered the publish")

	// Sent after ctx is done: not sent at all.
	call = acks.newCall(1)
	defer call.end()
	err = call.send(c, js, 0, nats.NewMsg("pa.never"))
	assert.ErrorContains(t, err, "not sent")
	assert.Zero(t, msgCount(t, js, "PA"))
}
