package jetstream

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// blockedSubscription subscribes on nc with a handler that holds the first
// message until the test ends, and queues a second behind it: draining nc
// cannot finish while the test runs.
func blockedSubscription(t *testing.T, nc *nats.Conn) {
	t.Helper()
	started, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	first := true
	_, err := nc.Subscribe("blocked", func(*nats.Msg) {
		if first {
			first = false
			close(started)
		}
		<-release
	})
	require.NoError(t, err)
	require.NoError(t, nc.Publish("blocked", []byte("1")))
	require.NoError(t, nc.Publish("blocked", []byte("2")))
	require.NoError(t, nc.Flush())
	closedWithin(t, started, waitShort, "the handler starting")
}

func TestDrainReportsDrainError(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	nc.Close()

	err = drain(nc, time.Second)
	require.ErrorIs(t, err, nats.ErrConnectionClosed)
	assert.Contains(t, err.Error(), "drain")
}

func TestDrainReportsTimeout(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	blockedSubscription(t, nc)

	err = drain(nc, 300*time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "drain")
	assert.Contains(t, err.Error(), "300ms")
	assert.True(t, nc.IsClosed(), "the connection is closed after the timeout")
}

// Close says when the connection could not be drained: a message still in
// a handler of the connection was not settled, and what was buffered may
// not have reached NATS.
func TestCloseReturnsDrainError(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	blockedSubscription(t, ps.conn())

	err := ps.Close()
	require.Error(t, err, "the drain did not finish within %s", drainTimeout)
	assert.Contains(t, err.Error(), "drain")
	assert.NoError(t, ps.Close(), "a second Close has nothing left to do")
}
