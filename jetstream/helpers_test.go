package jetstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// waitFor bounds every wait for something the broker or the component should
// do; waitShort is for things that should happen at once.
const (
	waitFor   = 15 * time.Second
	waitShort = 5 * time.Second
	tick      = 20 * time.Millisecond
)

// startNATS runs a real nats-server with JetStream for one test and returns
// a raw JetStream client for checking what the component did.
func startNATS(t *testing.T) (*server.Server, natsjs.JetStream) {
	t.Helper()
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	return ns, js
}

// logBuffer collects the component's log, shown when the test fails.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var loggerSeq atomic.Int64

// newInstance returns an uninitialised PubSub whose log is captured.
func newInstance(t *testing.T) (*PubSub, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	l := logger.NewLogger(fmt.Sprintf("jetstream-test-%d", loggerSeq.Add(1)))
	l.SetOutput(buf)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("component log:\n%s", buf.String())
		}
	})
	return New(l), buf
}

// open initialises a PubSub on url with props and closes it when the test ends.
func open(t *testing.T, url string, props map[string]string) (*PubSub, *logBuffer) {
	t.Helper()
	ps, buf := newInstance(t)
	md := map[string]string{"natsURL": url}
	for k, v := range props {
		md[k] = v
	}
	require.NoError(t, ps.Init(t.Context(), pubsub.Metadata{Base: contribmd.Base{Name: "test", Properties: md}}))
	t.Cleanup(func() { require.NoError(t, ps.Close()) })
	return ps, buf
}

// ctx bounds one call.
func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func publish(t *testing.T, ps *PubSub, topic, data string, md map[string]string) {
	t.Helper()
	require.NoError(t, ps.Publish(ctx(t), &pubsub.PublishRequest{PubsubName: "test", Topic: topic, Data: []byte(data), Metadata: md}))
}

// collect is a handler that passes every message on and acks it.
func collect() (pubsub.Handler, chan *pubsub.NewMessage) {
	ch := make(chan *pubsub.NewMessage, 1000)
	return func(_ context.Context, m *pubsub.NewMessage) error {
		ch <- m
		return nil
	}, ch
}

func subscribe(t *testing.T, ps *PubSub, topic string, md map[string]string, h pubsub.Handler) {
	t.Helper()
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: topic, Metadata: md}, h))
}

// recv and nothing keep the short names these tests read well with; the
// kit holds the one implementation.
func recv[T any](t *testing.T, ch <-chan T, within time.Duration) T {
	t.Helper()
	return natstest.Recv(t, ch, within)
}

func nothing[T any](t *testing.T, ch <-chan T, d time.Duration) {
	t.Helper()
	natstest.Nothing(t, ch, d)
}

func closedWithin(t *testing.T, ch <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	if _, err := natstest.Within(ch, within); err != nil {
		t.Fatalf("%s did not happen: %v", what, err)
	}
}

func streamInfo(t *testing.T, js natsjs.JetStream, name string) *natsjs.StreamInfo {
	t.Helper()
	st, err := js.Stream(ctx(t), name)
	require.NoError(t, err, "stream %q", name)
	info, err := st.Info(ctx(t))
	require.NoError(t, err)
	return info
}

func msgCount(t *testing.T, js natsjs.JetStream, name string) uint64 {
	t.Helper()
	return streamInfo(t, js, name).State.Msgs
}

func streamNames(t *testing.T, js natsjs.JetStream) []string {
	t.Helper()
	l := js.StreamNames(ctx(t))
	var names []string
	for n := range l.Name() {
		names = append(names, n)
	}
	require.NoError(t, l.Err())
	return names
}

func consumerInfos(t *testing.T, js natsjs.JetStream, stream string) []*natsjs.ConsumerInfo {
	t.Helper()
	st, err := js.Stream(ctx(t), stream)
	require.NoError(t, err)
	l := st.ListConsumers(ctx(t))
	var out []*natsjs.ConsumerInfo
	for ci := range l.Info() {
		out = append(out, ci)
	}
	require.NoError(t, l.Err())
	return out
}

// consumerInfo returns the info of a consumer, or nil if it does not exist.
// It does not fail the test, so it can be polled from require.Eventually.
func consumerInfo(js natsjs.JetStream, stream, name string) (*natsjs.ConsumerInfo, error) {
	c, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	cons, err := js.Consumer(c, stream, name)
	if err != nil {
		if errors.Is(err, natsjs.ErrConsumerNotFound) {
			return nil, nil
		}
		return nil, err
	}
	return cons.Info(c)
}

// settledConsumer waits until a consumer has nothing pending or
// unacknowledged and returns its info.
func settledConsumer(t *testing.T, js natsjs.JetStream, stream, name string) *natsjs.ConsumerInfo {
	t.Helper()
	var info *natsjs.ConsumerInfo
	require.Eventually(t, func() bool {
		i, err := consumerInfo(js, stream, name)
		if err != nil || i == nil {
			return false
		}
		info = i
		return i.NumAckPending == 0 && i.NumPending == 0
	}, waitFor, tick, "consumer %q on stream %q never settled", name, stream)
	return info
}

// count reads the number of messages a stream holds without failing the
// test, for polling.
func count(js natsjs.JetStream, name string) uint64 {
	c, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	st, err := js.Stream(c, name)
	if err != nil {
		return ^uint64(0)
	}
	info, err := st.Info(c)
	if err != nil {
		return ^uint64(0)
	}
	return info.State.Msgs
}

// keepAccountStore creates an unrelated stream, for tests that delete a
// stream and create one again: nats-server removes an account's store
// directory in the background when its last stream is deleted, and a stream
// created meanwhile fails with "error creating store for stream".
func keepAccountStore(t *testing.T, js natsjs.JetStream) {
	t.Helper()
	_, err := js.CreateStream(ctx(t), natsjs.StreamConfig{Name: "BYSTANDER", Subjects: []string{"bystander"}})
	require.NoError(t, err)
}

// removeStream deletes stream name, as nats stream rm does, and waits for
// nats-server to remove its files, which it does after it answers: a
// stream created under the same name before that fails to store.
func removeStream(t *testing.T, ns *server.Server, js natsjs.JetStream, name string) {
	t.Helper()
	files := filepath.Join(ns.JetStreamConfig().StoreDir, "$G", "streams", name)
	require.DirExists(t, files)
	require.NoError(t, js.DeleteStream(ctx(t), name))
	require.Eventually(t, func() bool { _, err := os.Stat(files); return os.IsNotExist(err) }, waitFor, tick, "the files of stream %s stay", name)
}

// startRestartable runs nats-server as startNATS does, and returns the
// options that start it again on the same port with the same store, as
// after an outage.
func startRestartable(t *testing.T) (*server.Server, server.Options) {
	t.Helper()
	var opts *server.Options
	ns := natstest.Start(t, func(o *server.Options) { opts = o })
	o := *opts
	o.Port = ns.Addr().(*net.TCPAddr).Port
	return ns, o
}

// runAgain starts nats-server with o, from startRestartable, until the test
// ends.
func runAgain(t *testing.T, o server.Options) *server.Server {
	t.Helper()
	ns := natstest.Run(t, &o)
	t.Cleanup(func() { natstest.Stop(ns) })
	return ns
}

// bulkResult is the outcome of a BulkPublish made in the background.
type bulkResult struct {
	resp pubsub.BulkPublishResponse
	err  error
}

// bulkPublishing makes req on ps in the background, with c.
func bulkPublishing(c context.Context, ps *PubSub, req *pubsub.BulkPublishRequest) <-chan bulkResult {
	res := make(chan bulkResult, 1)
	go func() {
		r, err := ps.BulkPublish(c, req)
		res <- bulkResult{r, err}
	}()
	return res
}
