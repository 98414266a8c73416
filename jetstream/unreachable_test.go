package jetstream

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// failFast bounds a call that must not wait for NATS.
const failFast = time.Second

// unusedPort returns a loopback port nobody listens on (yet).
func unusedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// notConnectedState matches the connection state a not-connected error names.
var notConnectedState = regexp.MustCompile(`\b(CONNECTING|RECONNECTING|DISCONNECTED)\b`)

// requireNotConnected checks an error of a call made while NATS is down.
func requireNotConnected(t *testing.T, err error, shownURL, secret string) {
	t.Helper()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNotConnected)
	assert.Equal(t, KindUnavailable, KindOf(err), "maps to gRPC Unavailable: %v", err)
	assert.Contains(t, err.Error(), "NATS at "+shownURL)
	assert.Regexp(t, notConnectedState, err.Error(), "the error names the connection state")
	assert.Contains(t, err.Error(), "natsURL", "the error says what to check")
	if secret != "" {
		assert.NotContains(t, err.Error(), secret)
	}
}

// With nothing listening at natsURL, Init succeeds (it connects in the
// background) and publishing fails at once, saying why, until NATS is there.
func TestPublishFailsFastWhileNATSUnreachable(t *testing.T) {
	t.Parallel()
	port := unusedPort(t)
	const secret = "s3cret-pw"
	url := fmt.Sprintf("nats://app:%s@127.0.0.1:%d", secret, port)
	shown := fmt.Sprintf("nats://***@127.0.0.1:%d", port)
	ps, buf := open(t, url, map[string]string{"reconnectWait": "100ms"})
	t.Cleanup(func() { assert.NotContains(t, buf.String(), secret, "the log shows the password") })

	publishOnce := func() (time.Duration, error) {
		start := time.Now()
		err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "TWITTERCLONE.tweets", Data: []byte("hi")})
		return time.Since(start), err
	}
	took, err := publishOnce()
	t.Logf("Publish failed after %s: %v", took, err)
	assert.Less(t, took, failFast, "Publish waited for NATS instead of failing fast")
	requireNotConnected(t, err, shown, secret)
	// Ping says the same, for probes.
	requireNotConnected(t, ps.Ping(ctx(t)), shown, secret)

	// Once a retry was refused, the error says so.
	var slowest time.Duration
	require.Eventually(t, func() bool {
		took, err := publishOnce()
		slowest = max(slowest, took)
		return err != nil && strings.Contains(err.Error(), "connection refused")
	}, waitShort, tick, "the error never named the refused connection")
	assert.Less(t, slowest, failFast)

	// A batch fails as a whole, each entry with its own error; an invalid
	// entry keeps its own reason.
	req := &pubsub.BulkPublishRequest{Topic: "TWITTERCLONE.tweets", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "1", Event: []byte("one"), ContentType: "text/plain"},
		{EntryId: "2", Event: []byte("two"), ContentType: "text/plain"},
		{EntryId: "bad", Event: []byte("bad"), ContentType: "text/plain", Metadata: map[string]string{"bad key": "x"}},
		{EntryId: "3", Event: []byte("three"), ContentType: "text/plain"},
	}}
	start := time.Now()
	resp, err := ps.BulkPublish(ctx(t), req)
	took = time.Since(start)
	t.Logf("BulkPublish failed after %s: %v", took, err)
	assert.Less(t, took, failFast, "BulkPublish waited for NATS instead of failing fast")
	requireNotConnected(t, err, shown, secret)
	require.Len(t, resp.FailedEntries, len(req.Entries), "every entry is reported failed")
	for _, f := range resp.FailedEntries {
		if f.EntryId == "bad" {
			assert.Equal(t, KindInvalid, KindOf(f.Error), "entry %s: %v", f.EntryId, f.Error)
			continue
		}
		requireNotConnected(t, f.Error, shown, secret)
	}

	// NATS comes up on that port: publishing works without anything else.
	ns := natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(context.Background(), failFast)
		defer cancel()
		return ps.Publish(c, &pubsub.PublishRequest{Topic: "TWITTERCLONE.tweets", Data: []byte("hi")}) == nil
	}, waitFor, tick, "Publish never succeeded once NATS was up")
	resp, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "TWITTERCLONE.tweets", Entries: req.Entries[:2]})
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	_, js := natstest.Client(t, ns)
	name, err := js.StreamNameBySubject(ctx(t), "TWITTERCLONE.tweets")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), msgCount(t, js, name), "the first Publish that succeeded and the two entries")
}

// A publish that started while NATS was up and lost it on the way names the
// lost connection too, rather than only a timeout.
func TestPublishAfterNATSWentAwayFailsFast(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"reconnectWait": "100ms"})
	publish(t, ps, "gone", "before", nil)

	natstest.Stop(ns)
	require.Eventually(t, func() bool { return !ps.conn().IsConnected() }, waitShort, tick)
	start := time.Now()
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "gone", Data: []byte("after")})
	took := time.Since(start)
	t.Logf("Publish failed after %s: %v", took, err)
	assert.Less(t, took, failFast)
	requireNotConnected(t, err, ns.ClientURL(), "")
	assert.Contains(t, err.Error(), "lost", "the error says the connection was lost, not never made")
}

// countLines counts the log lines that contain s.
func countLines(buf *logBuffer, s string) int {
	n := 0
	for line := range strings.Lines(buf.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// The log keeps saying that NATS is unreachable, at a bounded rate, and says
// once that the connection came up; then the warnings stop. Not parallel:
// it shortens unreachableWarnEvery for the instance it creates.
func TestUnreachableWarningRepeats(t *testing.T) {
	const every = 150 * time.Millisecond
	old := unreachableWarnEvery
	unreachableWarnEvery = every
	t.Cleanup(func() { unreachableWarnEvery = old })

	port := unusedPort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	started := time.Now()
	ps, buf := open(t, url, map[string]string{"reconnectWait": "50ms"})
	const still = "is still not reachable"
	require.Eventually(t, func() bool { return countLines(buf, still) >= 3 }, waitShort, tick,
		"the warning was not repeated")
	warned := countLines(buf, still)
	elapsed := time.Since(started)
	assert.LessOrEqual(t, warned, int(elapsed/every)+1, "more than one warning per %s", every)
	log := buf.String()
	assert.Contains(t, log, "NATS at "+url+" "+still)
	assert.Regexp(t, `after \d+(\.\d+)?m?s`, log, "the warning says how long NATS has been unreachable")
	assert.Regexp(t, `\d+ connection attempts failed`, log, "the warning counts the failed attempts")
	assert.Contains(t, log, "connection refused", "the warning gives the last error")
	assert.Contains(t, log, "natsURL", "the warning says what to check")

	// NATS comes up: one info line, then no more warnings.
	ns := natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool { return countLines(buf, "connected to NATS at "+url) >= 1 }, waitFor, tick,
		"the connection was not logged")
	warned = countLines(buf, still)
	require.Never(t, func() bool { return countLines(buf, still) > warned }, 5*every, tick,
		"the warning went on after NATS was connected")
	assert.Equal(t, 1, countLines(buf, "connected to NATS at "+url), "the connection is logged once")
	require.NoError(t, ps.Ping(ctx(t)))

	// The connection is lost: the warnings come back, and stop again with
	// one line once it is back.
	natstest.Stop(ns)
	require.Eventually(t, func() bool { return countLines(buf, still) >= warned+2 }, waitShort, tick,
		"the warning was not repeated after the connection was lost")
	assert.Regexp(t, `connection lost \d+(\.\d+)?m?s ago`, buf.String())
	natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool { return countLines(buf, "reconnected to NATS at "+url) == 1 }, waitFor, tick,
		"the reconnection was not logged")
	warned = countLines(buf, still)
	require.Never(t, func() bool { return countLines(buf, still) > warned }, 5*every, tick,
		"the warning went on after NATS was reconnected")
	assert.Equal(t, 1, countLines(buf, "reconnected to NATS at "+url))
}

// hangUp accepts connections on a loopback port and closes each at once, as
// a service that is not nats-server might; it returns the port and the
// number of connections so far.
func hangUp(t *testing.T) (int, func() int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = l.Close(); <-done })
	return l.Addr().(*net.TCPAddr).Port, func() int { return int(n.Load()) }
}

var failedAttempts = regexp.MustCompile(`(\d+) connection attempts? failed`)

// When something answers at natsURL but is not NATS, every attempt fails in
// the handshake, which nats.go reports to no handler: the warning repeats all
// the same, and counts those attempts.
func TestUnreachableWarningWhenHandshakeFails(t *testing.T) {
	const every = 150 * time.Millisecond
	old := unreachableWarnEvery
	unreachableWarnEvery = every
	t.Cleanup(func() { unreachableWarnEvery = old })

	port, accepted := hangUp(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	ps, buf := open(t, url, map[string]string{"reconnectWait": "50ms"})
	const still = "is still not reachable"
	require.Eventually(t, func() bool { return countLines(buf, still) >= 3 }, waitShort, tick,
		"the warning was not repeated")

	start := time.Now()
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("x")})
	assert.Less(t, time.Since(start), failFast)
	requireNotConnected(t, err, url, "")
	m := failedAttempts.FindStringSubmatch(err.Error())
	require.NotNil(t, m, "the error counts the failed attempts: %v", err)
	counted, _ := strconv.Atoi(m[1])
	// One attempt may be under way on either side of the count.
	n := accepted()
	assert.InDelta(t, n, counted, 2, "%d connections were refused in the handshake, the error counts %d", n, counted)
}

// NATS goes away in the middle of a large BulkPublish, and the call's
// deadline passes before it is back. The call reports entries failed, and
// daprd answers 500 so that the app publishes them again: none of them may be
// stored later, when NATS comes back, unless its error said that it may be,
// or that retry stores them twice (the entries have no id to de-duplicate
// them by). The acknowledgements stop reaching the component first, so that
// the call is surely still sending when NATS goes away. NATS is first
// brought back on another port, which the component does not know, to read
// what it stored before it went away: the entries in flight then. Only then
// does it come back where the component reconnects.
func TestBulkPublishFailedInAnOutageIsNotStoredLater(t *testing.T) {
	t.Parallel()
	ns, o := startRestartable(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	publish(t, ps, "midbulk", "first", nil)

	const n = 20000
	pad := strings.Repeat("x", 256)
	entries := make([]pubsub.BulkMessageEntry, n)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprint(i), Event: []byte(fmt.Sprint(i, pad)), ContentType: "text/plain"}
	}
	acksLost := px.dropFrom(`{"stream":"midbulk","seq":2`)
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	res := bulkPublishing(c, ps, &pubsub.BulkPublishRequest{PubsubName: "test", Topic: "midbulk", Entries: entries})
	closedWithin(t, acksLost, waitFor, "the first entry's acknowledgement")
	natstest.Stop(ns)
	r := recv(t, res, 30*time.Second)
	failed := len(r.resp.FailedEntries)
	t.Logf("BulkPublish: %d of %d entries reported failed; error: %v", failed, n, r.err)

	// NATS back where the component does not look: what it stored before.
	aside := o
	aside.Port = -1
	probe := natstest.Run(t, &aside)
	_, pjs := natstest.Client(t, probe)
	before := msgCount(t, pjs, "midbulk") - 1
	natstest.Stop(probe)

	back := runAgain(t, o)
	_, bjs := natstest.Client(t, back)
	require.Eventually(t, func() bool { return ps.conn().IsConnected() }, waitFor, tick)
	// Whatever the component still had to send went out before this.
	publish(t, ps, "midbulk", "last", nil)
	after := msgCount(t, bjs, "midbulk") - 2
	t.Logf("stored before the outage: %d; stored in all: %d", before, after)
	assert.LessOrEqual(t, uint64(n-failed), before, "entries reported stored were not stored")
	// Each entry stored since was reported failed: its error must have said
	// that it may be stored.
	why := map[string]error{}
	for _, f := range r.resp.FailedEntries {
		why[f.EntryId] = f.Error
	}
	st, err := bjs.Stream(ctx(t), "midbulk")
	require.NoError(t, err)
	unsaid := 0
	for seq := before + 2; seq <= after+1; seq++ {
		m, err := st.GetMsg(ctx(t), seq)
		require.NoError(t, err)
		id := strings.TrimRight(string(m.Data), "x")
		if e := why[id]; e == nil || !strings.Contains(e.Error(), "may be stored") {
			if unsaid++; unsaid == 1 {
				t.Logf("entry %s, stored once NATS was back, was reported: %v", id, e)
			}
		}
	}
	assert.Zero(t, unsaid,
		"%d entries that BulkPublish reported failed, without saying that they may be stored, were stored once NATS was back, after the call had returned; the retry the failure asks for stores them twice",
		unsaid)
	require.NoError(t, ps.Close())
}

// A subscription made while NATS is unreachable says so at once, naming NATS
// and what to check, and once (the figures of the outage are the
// connection's own warnings); not that JetStream did not answer, which would
// point at leader elections. When NATS comes up, it subscribes and delivers.
func TestSubscribeWhileNATSUnreachableSaysSo(t *testing.T) {
	t.Parallel()
	port := unusedPort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	ps, buf := open(t, url, map[string]string{"reconnectWait": "100ms"})
	h, got := collect()
	subscribe(t, ps, "TWITTERCLONE.tweets", nil, h)

	waiting := `topic \"TWITTERCLONE.tweets\": NATS at ` + url + " is not connected" // quotes escaped in the log
	require.Eventually(t, func() bool { return countLines(buf, waiting) == 1 }, failFast, tick,
		"the subscription did not say that it waits for NATS")
	// Several attempts, backing off up to retryMax, say nothing new.
	require.Never(t, func() bool { return countLines(buf, waiting) > 1 }, 2*retryMax, tick,
		"the subscription repeated that NATS is not connected at each attempt")
	log := buf.String()
	assert.NotContains(t, log, "did not answer in time")
	assert.Contains(t, log, "natsURL", "the log says what to check")

	ns := natstest.Start(t, func(o *server.Options) { o.Port = port })
	require.Eventually(t, func() bool { return countLines(buf, `topic \"TWITTERCLONE.tweets\": recovered`) == 1 }, waitFor, tick,
		"the subscription did not recover once NATS was up")
	_, js := natstest.Client(t, ns)
	_, err := js.Publish(ctx(t), "TWITTERCLONE.tweets", []byte("hi"))
	require.NoError(t, err)
	assert.Equal(t, "hi", string(recv(t, got, waitFor).Data))
}
