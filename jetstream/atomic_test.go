package jetstream

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

func textEntries(prefix string, n int) []pubsub.BulkMessageEntry {
	entries := make([]pubsub.BulkMessageEntry, n)
	for i := range entries {
		entries[i] = pubsub.BulkMessageEntry{EntryId: fmt.Sprintf("%s%d", prefix, i), Event: []byte(fmt.Sprintf("%s%d", prefix, i)), ContentType: "text/plain"}
	}
	return entries
}

// failedIDs lists the entries a response reports failed, each with an error.
func failedIDs(t *testing.T, resp pubsub.BulkPublishResponse) []string {
	t.Helper()
	var ids []string
	for _, f := range resp.FailedEntries {
		require.Error(t, f.Error, f.EntryId)
		ids = append(ids, f.EntryId)
	}
	slices.Sort(ids)
	return ids
}

func entryIDs(entries []pubsub.BulkMessageEntry) []string {
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.EntryId)
	}
	slices.Sort(ids)
	return ids
}

var atomicBulk = map[string]string{"bulkPublishAtomic": "true"}

// An atomic BulkPublish stores every entry or none: one entry that is
// invalid, here or at the server, fails them all, and nothing is stored.
func TestBulkPublishAtomic(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	bulk := func(entries []pubsub.BulkMessageEntry, md map[string]string) (pubsub.BulkPublishResponse, error) {
		return ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "ledger", Entries: entries, Metadata: md})
	}

	entries := textEntries("a", 5)
	resp, err := bulk(entries, atomicBulk)
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	info := streamInfo(t, js, "ledger")
	assert.True(t, info.Config.AllowAtomicPublish, "auto-provisioning allows atomic publish")
	assert.Equal(t, uint64(5), info.State.Msgs)

	// Invalid here: nothing is sent.
	entries = textEntries("b", 5)
	entries[2].Metadata = map[string]string{"note": "line1\nline2"}
	resp, err = bulk(entries, atomicBulk)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindInvalid, KindOf(err))
	assert.Equal(t, entryIDs(entries), failedIDs(t, resp), "every entry fails")
	for _, f := range resp.FailedEntries {
		if f.EntryId == "b2" {
			assert.Contains(t, f.Error.Error(), "line break")
		} else {
			assert.Contains(t, f.Error.Error(), `entry "b2"`, "the others name the entry that failed them")
			assert.Contains(t, f.Error.Error(), "atomic")
		}
	}
	assert.Equal(t, uint64(5), msgCount(t, js, "ledger"), "nothing was stored")

	// Refused by JetStream: the entries before it were sent and are dropped.
	entries = textEntries("c", 5)
	entries[3].Metadata = map[string]string{"expectedLastSubjectSequence": "999"}
	resp, err = bulk(entries, atomicBulk)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.Equal(t, entryIDs(entries), failedIDs(t, resp))
	for _, s := range []string{"expectedLastSubjectSequence", `"999"`, `entry "c3"`, "nothing was stored"} {
		assert.Contains(t, err.Error(), s)
	}
	assert.Equal(t, uint64(5), msgCount(t, js, "ledger"), "nothing was stored")

	// An event-sourced append of several events after what was read.
	entries = textEntries("d", 3)
	entries[0].Metadata = map[string]string{"expectedLastSubjectSequence": "5"}
	_, err = bulk(entries, atomicBulk)
	require.NoError(t, err)
	assert.Equal(t, uint64(8), msgCount(t, js, "ledger"))
	_, err = bulk(entries, atomicBulk)
	require.Error(t, err, "the same append again no longer follows what the stream holds")
	assert.Contains(t, err.Error(), "sequence 8")
	assert.Equal(t, uint64(8), msgCount(t, js, "ledger"))
}

// bulkPublishAtomic in the component metadata makes every BulkPublish
// atomic, unless the request says otherwise.
func TestBulkPublishAtomicComponentDefault(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"bulkPublishAtomic": "true"})
	entries := textEntries("e", 4)
	entries[1].Metadata = map[string]string{"expectedLastSubjectSequence": "7"}

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders", Entries: entries})
	require.Error(t, err)
	assert.Len(t, resp.FailedEntries, 4)
	assert.Zero(t, msgCount(t, js, "orders"))

	resp, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "orders", Entries: entries, Metadata: map[string]string{"bulkPublishAtomic": "false"}})
	require.Error(t, err)
	assert.Equal(t, []string{"e1"}, failedIDs(t, resp), "without atomicity, each entry fails on its own")
	assert.Equal(t, uint64(3), msgCount(t, js, "orders"))
}

// What JetStream cannot do in an atomic batch fails with the reason and the
// fix, and nothing is stored.
func TestBulkPublishAtomicLimits(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	bulk := func(entries []pubsub.BulkMessageEntry, md map[string]string) (pubsub.BulkPublishResponse, error) {
		return ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "big", Entries: entries, Metadata: md})
	}
	publish(t, ps, "big", "first", map[string]string{"msgId": "m1"})

	// More entries than the server takes in one batch.
	resp, err := bulk(textEntries("f", 1001), atomicBulk)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.Len(t, resp.FailedEntries, 1001)
	for _, s := range []string{"1001 entries", "1000", "max_batch_size", "split"} {
		assert.Contains(t, err.Error(), s)
	}
	assert.Equal(t, uint64(1), msgCount(t, js, "big"))

	// An id that the stream has already stored.
	entries := textEntries("g", 3)
	entries[1].Metadata = map[string]string{"msgId": "m1"}
	resp, err = bulk(entries, atomicBulk)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.Len(t, resp.FailedEntries, 3)
	for _, s := range []string{"duplicate", "id", "nothing was stored"} {
		assert.Contains(t, err.Error(), s)
	}
	assert.Equal(t, uint64(1), msgCount(t, js, "big"))

	// expectedLastMsgId, which JetStream does not check in a batch.
	entries = textEntries("h", 2)
	entries[0].Metadata = map[string]string{"expectedLastMsgId": "m1"}
	resp, err = bulk(entries, atomicBulk)
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindInvalid, KindOf(err))
	assert.Len(t, resp.FailedEntries, 2)
	for _, s := range []string{"expectedLastMsgId", "bulkPublishAtomic", "expectedLastSubjectSequence"} {
		assert.Contains(t, err.Error(), s)
	}

	// A value that is not a boolean.
	_, err = bulk(textEntries("i", 2), map[string]string{"bulkPublishAtomic": "yes please"})
	require.Error(t, err)
	assert.Equal(t, KindInvalid, KindOf(err))
	assert.Contains(t, err.Error(), `bulkPublishAtomic = "yes please"`)
	assert.Equal(t, uint64(1), msgCount(t, js, "big"))

	// Delayed entries go into the batch too, each to its own schedule.
	entries = textEntries("j", 2)
	entries[1].Metadata = map[string]string{"deliverAfter": "1h"}
	_, err = bulk(entries, atomicBulk)
	require.NoError(t, err)
	assert.Equal(t, uint64(3), msgCount(t, js, "big"))
}

// With provisioning off, a stream that does not allow atomic publish is a
// clear refusal, and the stream is left as it is.
func TestBulkPublishAtomicNotAllowed(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "PLAIN", Subjects: []string{"plain"}})
	require.NoError(t, err)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "plain", Entries: textEntries("k", 2), Metadata: atomicBulk})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindRejected, KindOf(err))
	assert.ErrorIs(t, err, ErrAtomicNotAllowed)
	assert.Len(t, resp.FailedEntries, 2)
	for _, s := range []string{"PLAIN", "allow_atomic", "autoProvision"} {
		assert.Contains(t, err.Error(), s)
	}
	info := streamInfo(t, js, "PLAIN")
	assert.False(t, info.Config.AllowAtomicPublish)
	assert.Zero(t, info.State.Msgs)
}

// An operator turns atomic publish off, or replaces the stream, after the
// component set it up: the next atomic bulk sets it up again.
func TestBulkPublishAtomicAfterStreamChanged(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	keepAccountStore(t, js)
	ps, _ := open(t, ns.ClientURL(), nil)
	bulk := func() error {
		_, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "changed", Entries: textEntries("l", 3), Metadata: atomicBulk})
		return err
	}
	require.NoError(t, bulk())

	cfg := streamInfo(t, js, "changed").Config
	cfg.AllowAtomicPublish = false
	_, err := js.UpdateStream(ctx(t), cfg)
	require.NoError(t, err)
	require.NoError(t, bulk(), "after allow_atomic was turned off")
	assert.Equal(t, uint64(6), msgCount(t, js, "changed"))

	require.NoError(t, js.DeleteStream(ctx(t), "changed"))
	require.NoError(t, bulk(), "after the stream was deleted")
	assert.Equal(t, uint64(3), msgCount(t, js, "changed"))
}

// An entry above the stream's max_msg_size fails an atomic bulk with the
// stream, its limit and the entry named, and nothing is stored; so does one
// that only the batch's own headers take over the limit.
func TestBulkPublishAtomicTooLarge(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"streamMaxMsgSize": "4096"})
	publish(t, ps, "sized", "first", nil)
	for _, size := range []int{5000, 4096 - 50} {
		entries := textEntries("k", 3)
		entries[1].Event = make([]byte, size)
		resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "sized", Entries: entries, Metadata: atomicBulk})
		require.Error(t, err, "%d bytes", size)
		t.Log(err)
		assert.Equal(t, KindInvalid, KindOf(err))
		require.Len(t, resp.FailedEntries, 3)
		for _, s := range []string{`stream "sized" takes messages of at most 4096 bytes`, "streamMaxMsgSize", `"k1"`, "nothing was stored"} {
			assert.Contains(t, err.Error(), s)
		}
		for _, f := range resp.FailedEntries {
			assert.ErrorContains(t, f.Error, `"k1"`, "entry %q", f.EntryId)
		}
		assert.Equal(t, uint64(1), msgCount(t, js, "sized"))
	}
}

// The same for the server's max_payload, on a stream without a
// max_msg_size: an entry that a plain publish takes, but that the batch's
// headers take over max_payload, fails the atomic bulk with the entry, its
// size, the limit and the fix named, as an entry over max_msg_size does;
// not with nats.go's bare "maximum payload exceeded", which names none.
func TestBulkPublishAtomicEntryOverMaxPayloadWithTheBatchHeaders(t *testing.T) {
	t.Parallel()
	ns, js := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), nil)
	limit := ps.maxPayload()
	big := make([]byte, limit-60)
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "payload", Data: big}), "a plain publish takes the entry")
	entries := textEntries("k", 3)
	entries[1].Event = big
	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "payload", Entries: entries, Metadata: atomicBulk})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, KindInvalid, KindOf(err))
	for _, s := range []string{`"k1"`, "max_payload", fmt.Sprint(limit), fmt.Sprint(len(big)), "nothing was stored"} {
		assert.Contains(t, err.Error(), s)
	}
	require.Len(t, resp.FailedEntries, 3)
	for _, f := range resp.FailedEntries {
		assert.ErrorContains(t, f.Error, `"k1"`, "entry %q", f.EntryId)
	}
	assert.Equal(t, uint64(1), msgCount(t, js, "payload"))
}

// NATS goes away as an atomic bulk of 1000 entries commits: the commit is
// lost with the connection, and NATS comes back with its store at once. No
// server can answer that commit now, on the connection made since, yet the
// call waits for its deadline (nats.go leaves a request whose connection
// dropped waiting), and then fails as DeadlineExceeded. It must fail as soon
// as the connection is lost, as Unavailable, saying that the bulk may be
// stored or not, as nats.go does for the acknowledgements of a plain
// publish.
func TestBulkPublishAtomicCutByAnOutage(t *testing.T) {
	t.Parallel()
	ns, o := startRestartable(t)
	px := newProxy(t, ns.Addr().String())
	ps, _ := open(t, px.url(), map[string]string{"reconnectWait": "100ms"})
	_, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "atomout", Entries: textEntries("a", 1), Metadata: atomicBulk})
	require.NoError(t, err)

	lost := px.dropFrom(jetstreamext.BatchCommitHeader + ": 1\r\n")
	entries := textEntries("b", 1000)
	res := bulkPublishing(ctx(t), ps, &pubsub.BulkPublishRequest{Topic: "atomout", Entries: entries, Metadata: atomicBulk})
	closedWithin(t, lost, waitFor, "the commit")
	natstest.Stop(ns)
	back := runAgain(t, o)
	stopped := time.Now()
	r := recv(t, res, 30*time.Second)
	took := time.Since(stopped)
	_, js := natstest.Client(t, back)
	stored := msgCount(t, js, "atomout") - 1
	t.Logf("atomic BulkPublish returned %s after NATS went away: %d entries reported failed, %d stored; error: %v",
		took.Round(10*time.Millisecond), len(r.resp.FailedEntries), stored, r.err)
	assert.Zero(t, stored, "all or none")
	require.Error(t, r.err)
	assert.Less(t, took, waitShort, "the atomic bulk waited for its deadline after the connection was lost")
	assert.Len(t, r.resp.FailedEntries, len(entries), "every entry fails")
	assert.Equal(t, codes.Unavailable, status.Code(r.err), "%v", r.err)
	assert.Contains(t, r.err.Error(), "may be stored or not")
}
