package pluggable

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/dapr/kit/logger"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/metrics"
)

// syncBuffer is a log sink that the component's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The component logs a failed Init itself, naming the Component and the
// field, so that its own log explains what daprd reported.
func TestInitErrorIsLogged(t *testing.T) {
	var out syncBuffer
	l := logger.NewLogger("init-error-" + t.Name())
	l.SetOutput(&out)
	c := startComponentLogging(t, "nats-jetstream", l)
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "orders-pubsub")
	_, err = proto.NewPubSubClient(conn).Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: map[string]string{
		"natsURL": "nats://127.0.0.1:1", "maxInFlight": "many", "password": "s3cret", "user": "alice",
	}}})
	require.Error(t, err)
	logged := out.String()
	var line string
	for _, l := range strings.Split(logged, "\n") {
		if strings.Contains(l, "orders-pubsub") && strings.Contains(l, "maxInFlight") {
			line = l
		}
	}
	require.NotEmpty(t, line, "no log line names the Component and the field; the log:\n%s", logged)
	require.Contains(t, line, "level=error")
	require.NotContains(t, logged, "s3cret")
}

// sharedProcess is one component process that several daprds (each its own
// OS process, stood in for by a sleep child) reach on sockets of their own,
// so that each connection carries that daprd's process id, as on a laptop
// with several `dapr run`s.
type sharedProcess struct {
	t   *testing.T
	srv *Server
	gs  *grpc.Server
	dir string
	log *syncBuffer
}

func startShared(t *testing.T) *sharedProcess {
	t.Helper()
	log := &syncBuffer{}
	l := logger.NewLogger("shared-" + t.Name())
	l.SetOutput(log)
	l.SetOutputLevel(logger.InfoLevel)
	sp := &sharedProcess{t: t, srv: NewServer(l), gs: grpc.NewServer(grpc.ForceServerCodecV2(newCodec())), dir: t.TempDir(), log: log}
	proto.RegisterPubSubServer(sp.gs, sp.srv)
	t.Cleanup(func() {
		sp.srv.Shutdown(time.Second)
		sp.gs.Stop()
		if t.Failed() {
			t.Logf("component log:\n%s", log.String())
		}
	})
	return sp
}

// pidListener tags every connection with one daprd's process id.
type pidListener struct {
	net.Listener
	pid int
	srv *Server
}

func (l *pidListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := newPeerConn(c, l.pid, l.srv.connClosed)
	l.srv.connOpened(pc.addr)
	return pc, nil
}

// fakeDaprd is one daprd: a process of its own and a connection to the
// shared component process.
type fakeDaprd struct {
	t      *testing.T
	proc   *exec.Cmd
	conn   *grpc.ClientConn
	client proto.PubSubClient
	ctx    context.Context
	socket string
	ln     net.Listener
}

// daprd starts a daprd process and initialises Component "pubsub" for it.
func (sp *sharedProcess) daprd(props map[string]string) *fakeDaprd {
	t := sp.t
	t.Helper()
	proc := exec.Command("sleep", "300")
	require.NoError(t, proc.Start())
	t.Cleanup(func() { _ = proc.Process.Kill(); _ = proc.Wait() })
	l, err := net.Listen("unix", filepath.Join(sp.dir, "d"+strconv.Itoa(proc.Process.Pid)+".sock"))
	require.NoError(t, err)
	go func() { _ = sp.gs.Serve(&pidListener{Listener: l, pid: proc.Process.Pid, srv: sp.srv}) }()
	conn, err := grpc.NewClient("unix://"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	d := &fakeDaprd{t: t, proc: proc, conn: conn, client: proto.NewPubSubClient(conn),
		ctx: grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "pubsub"), socket: l.Addr().String(), ln: l}
	d.init(props)
	return d
}

func (d *fakeDaprd) init(props map[string]string) {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	_, err := d.client.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props}})
	require.NoError(d.t, err)
}

func (d *fakeDaprd) publish(topic, data string) error {
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	_, err := d.client.Publish(ctx, &proto.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: []byte(data)})
	return err
}

// daprdStream is one PullMessages stream of a daprd.
type daprdStream struct {
	stream proto.PubSub_PullMessagesClient
	cancel context.CancelFunc
	msgs   chan *proto.PullMessagesResponse
	ended  chan struct{} // closed once the stream has ended and msgs is closed
}

func (d *fakeDaprd) subscribe(topic string) *daprdStream {
	d.t.Helper()
	ctx, cancel := context.WithCancel(d.ctx)
	d.t.Cleanup(cancel)
	stream, err := d.client.PullMessages(ctx)
	require.NoError(d.t, err)
	require.NoError(d.t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: topic}}))
	s := &daprdStream{stream: stream, cancel: cancel, msgs: make(chan *proto.PullMessagesResponse, 1000), ended: make(chan struct{})}
	go func() {
		defer close(s.ended)
		defer close(s.msgs)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			s.msgs <- m
		}
	}()
	return s
}

// Several apps started with `dapr run` share one component process. Stopping
// it while NATS is down ends within the drain bound plus one withdraw grace
// (5 s), whatever the number of daprds: each instance's pull requests can
// only end by the grace while NATS is away, and the instances wait for them
// side by side, not one after another.
func TestShutdownDuringOutageIsBoundedWithSeveralDaprds(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	sp := startShared(t)
	md := props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "10")
	var streams []*daprdStream
	for range 4 {
		d := sp.daprd(md)
		streams = append(streams, d.subscribe("orders"))
	}
	natstest.WaitConsumer(t, js, "orders", "app-orders")
	pub := sp.daprd(props(ns.ClientURL()))
	for i := range 8 {
		require.NoError(t, pub.publish("orders", "m"+strconv.Itoa(i)))
	}
	// The apps are slow: they hold what they get, and never ack.
	var mu sync.Mutex
	held := 0
	for _, s := range streams {
		go func() {
			for range s.msgs {
				mu.Lock()
				held++
				mu.Unlock()
			}
		}()
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return held == 8
	}, 10*time.Second, 20*time.Millisecond)

	natstest.Stop(ns)
	time.Sleep(3 * time.Second) // the outage itself: the component is stopped while NATS has been down a while
	const drain = 2 * time.Second
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		sp.srv.Shutdown(drain)
		done <- time.Since(start)
	}()
	bound := drain + 5*time.Second + 2*time.Second
	select {
	case took := <-done:
		t.Logf("Shutdown took %s", took.Round(time.Millisecond))
	case <-time.After(bound):
		took := <-done
		t.Fatalf("Shutdown during the outage took %s with 4 daprds; want at most %s (drain bound plus one withdraw grace)", took.Round(time.Millisecond), bound)
	}
	// Nothing can be given back while NATS is away; the log says when they come back instead.
	assert.Contains(t, sp.log.String(), "8 messages still unacknowledged after 2s, and NATS is not connected, so they cannot be given back now; JetStream delivers them again once their ackWait ends")
	assert.NotContains(t, sp.log.String(), "giving them back")
}

// acking acks what s receives and counts it by data.
func (s *daprdStream) acking() *rawReader {
	r := &rawReader{seen: map[string]int{}}
	go func() {
		for m := range s.msgs {
			r.mu.Lock()
			r.seen[string(m.GetData())]++
			r.mu.Unlock()
			_ = s.stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()})
		}
	}()
	return r
}

func (r *rawReader) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.seen {
		n += c
	}
	return n
}

// With priorityPolicy pinned, two daprds share one durable and JetStream
// pins one of them. When the pinned daprd pauses, it will not deliver
// anything until Resume, so the other daprd must take over at once, not
// only once pinnedTTL has passed, as it does when the paused one's
// subscription ends.
func TestPauseOfPinnedDaprdLeavesAnotherWorking(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	sp := startShared(t)
	md := props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "10", "priorityPolicy", "pinned", "pinnedTTL", "20s")
	a, b := sp.daprd(md), sp.daprd(md)
	ra := a.subscribe("pinned").acking()
	rb := b.subscribe("pinned").acking()
	natstest.WaitConsumer(t, js, "pinned", "app-pinned")
	require.NoError(t, a.publish("pinned", "first"))
	require.Eventually(t, func() bool { return ra.total()+rb.total() == 1 }, 10*time.Second, 20*time.Millisecond)
	pinned, other, otherReader := a, b, rb
	if rb.total() == 1 {
		pinned, other, otherReader = b, a, ra
	}

	ctx, cancel := context.WithTimeout(pinned.ctx, 10*time.Second)
	defer cancel()
	_, err := pinned.client.Pause(ctx, &proto.PauseRequest{})
	require.NoError(t, err)
	paused := time.Now()
	require.NoError(t, other.publish("pinned", "after-pause"))
	require.Eventually(t, func() bool { return otherReader.has([]string{"after-pause"}) }, 25*time.Second, 20*time.Millisecond)
	took := time.Since(paused)
	assert.Less(t, took, 5*time.Second, "the daprd that did not pause got the message %s after the pinned one paused: it waited for pinnedTTL (20s)", took.Round(100*time.Millisecond))
}

// A message the app never got must not be given back as a failed delivery
// because daprd restarted several times while it waited behind others. The
// app makes progress: each daprd (daprd 1.18.1 handles one message at a
// time) acks the oldest message it holds and is then restarted, as a user
// restarting `dapr run` does. No message made daprd crash, and the last one
// is handed over a fourth time: the cap meant for a message that makes
// daprd crash must not give it back as a failed delivery, since with
// maxDeliver 1 JetStream would never deliver it again.
func TestRestartsWithProgressKeepWaitingMessages(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	sp := startShared(t)
	md := props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "5", "maxDeliver", "1")
	pub := sp.daprd(md)
	ctx := context.Background()
	for round := range 5 {
		d := sp.daprd(md)
		s := d.subscribe("restarts")
		if round == 0 {
			natstest.WaitConsumer(t, js, "restarts", "app-restarts")
			for i := range 5 {
				require.NoError(t, pub.publish("restarts", "u"+strconv.Itoa(i)))
			}
		}
		cons, err := js.Consumer(ctx, "restarts", "app-restarts")
		require.NoError(t, err)
		var m *proto.PullMessagesResponse
		select {
		case m = <-s.msgs:
		case <-time.After(10 * time.Second):
		}
		if m == nil {
			info, err := cons.Info(ctx)
			require.NoError(t, err)
			t.Fatalf("daprd %d of 5 got nothing: u%d, which no app ever got, is gone (consumer: %d pending, %d awaiting an ack, ack floor %d, delivered %d)",
				round+1, round, info.NumPending, info.NumAckPending, info.AckFloor.Stream, info.Delivered.Stream)
		}
		require.Equal(t, "u"+strconv.Itoa(round), string(m.GetData()), "daprd %d of 5 got another message first", round+1)
		require.NoError(t, s.stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))
		require.Eventually(t, func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.AckFloor.Stream == uint64(round+1)
		}, 10*time.Second, 20*time.Millisecond)
		// daprd restarts: its connection closes and its process exits.
		_ = d.conn.Close()
		_ = d.proc.Process.Kill()
	}
}

// A daprd that exits while the component is still initialising one of its
// Components (NATS slow to answer; daprd gave up, or another Component made
// it exit) must not leave that instance open for good: its connection is
// already gone, so nothing notices later that the daprd has exited.
func TestDaprdExitDuringInitLeavesNoInstance(t *testing.T) {
	ns := natstest.Start(t)
	// A NATS that accepts and never answers keeps Init connecting.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	defer func() {
		for len(accepted) > 0 {
			_ = (<-accepted).Close()
		}
	}()
	sp := startShared(t)
	d := sp.daprd(props(ns.ClientURL()))
	pid := d.proc.Process.Pid
	slow := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "slow")
	initDone := make(chan error, 1)
	go func() {
		_, err := d.client.Init(slow, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props("nats://" + ln.Addr().String())}})
		initDone <- err
	}()
	first := <-accepted // Init is connecting now
	accepted <- first
	_ = d.proc.Process.Kill()
	_ = d.conn.Close()
	<-initDone
	require.Eventually(t, func() bool {
		return strings.Contains(sp.log.String(), `component \"slow\" of daprd process `+strconv.Itoa(pid)+" initialized")
	}, 20*time.Second, 20*time.Millisecond, "the component did not finish the Init")
	left := func() []string {
		sp.srv.mu.Lock()
		defer sp.srv.mu.Unlock()
		var out []string
		for k := range sp.srv.instances {
			if k.pid == pid {
				out = append(out, k.String())
			}
		}
		return out
	}
	assert.Eventually(t, func() bool { return len(left()) == 0 }, 5*time.Second, 50*time.Millisecond,
		"5s after the daprd exited, the component still has its instances %v open", left())
}

// When a daprd exits, its instances close, and every series labelled with
// that daprd must go with them: on a laptop each `dapr run` is a new
// process id, so a series left behind is a stale one that accumulates
// forever. The series the collector makes go; the PubAck latency
// histogram's must too.
func TestMetricsOfAnExitedDaprdGoAway(t *testing.T) {
	m, _, d, pid := measuredDaprd(t)
	require.NoError(t, d.publish("orders", "x"))
	// series lists the families that have a series of that daprd.
	series := func() []string {
		fams, err := m.Registry().Gather()
		require.NoError(t, err)
		var out []string
		for _, f := range fams {
			for _, mt := range f.GetMetric() {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "daprd" && l.GetValue() == pid {
						out = append(out, f.GetName())
					}
				}
			}
		}
		return out
	}
	require.Contains(t, series(), "jetstream_pubsub_publish_total")
	require.Contains(t, series(), "jetstream_pubsub_puback_seconds")

	require.NoError(t, d.proc.Process.Kill())
	_ = d.proc.Wait()
	require.NoError(t, d.conn.Close())
	require.Eventually(t, func() bool { return !slices.Contains(series(), "jetstream_pubsub_publish_total") }, 15*time.Second, 20*time.Millisecond,
		"the instance of the exited daprd was not closed")
	// The connection's close closes the instance at once (it may be a hot
	// reload); the histogram's series, kept for an instance initialised
	// again, go once the daprd has exited.
	assert.Eventually(t, func() bool { return len(series()) == 0 }, 15*time.Second, 20*time.Millisecond,
		"series of daprd %s stay after it exited and its instance closed: %v", pid, series())
}

// daprd initialises the same Component again (a hot reload): the series
// keep their labels (instance, daprd, topic, outcome), so they must keep
// counting. Instead publish_total starts again from 0 under the same
// labels, a counter going backwards within one process, while the PubAck
// histogram of the same publishes keeps counting: the two disagree.
func TestPublishCountersSurviveReInit(t *testing.T) {
	m, md, d, pid := measuredDaprd(t)
	// sample is the value of family name's series of this daprd's ok
	// publishes to orders; -1 when there is none.
	sample := func(name string) float64 {
		fams, err := m.Registry().Gather()
		require.NoError(t, err)
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
			for _, mt := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range mt.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["daprd"] != pid || labels["topic"] != "orders" || labels["outcome"] != "ok" {
					continue
				}
				if h := mt.GetHistogram(); h != nil {
					return float64(h.GetSampleCount())
				}
				return mt.GetCounter().GetValue()
			}
		}
		return -1
	}
	for i := range 3 {
		require.NoError(t, d.publish("orders", "m"+strconv.Itoa(i)))
	}
	require.Equal(t, 3.0, sample("jetstream_pubsub_publish_total"))
	require.Equal(t, 3.0, sample("jetstream_pubsub_puback_seconds"))

	d.init(md)
	require.NoError(t, d.publish("orders", "after"))
	assert.Equal(t, 4.0, sample("jetstream_pubsub_puback_seconds"))
	assert.Equal(t, 4.0, sample("jetstream_pubsub_publish_total"), "publish_total of daprd %s went back after the Component was initialised again", pid)
}

// The component process restarted (its container was OOM-killed, say) while
// daprd kept running: daprd initialises a Component only when it starts, so
// its calls now reach a process that never saw its Init, and its
// subscriptions ended for good. The call must say so and what to do, and the
// readiness probe must fail naming the Component and the daprd, so that the
// pod shows why its app can neither publish nor receive; until daprd
// initialises the Component again, or exits.
func TestCallsOfADaprdThisProcessNeverInitialised(t *testing.T) {
	m, md, d, pid := measuredDaprd(t)
	require.Empty(t, m.NotReady())

	lost := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "orders")
	_, err := d.client.Publish(lost, &proto.PublishRequest{PubsubName: "orders", Topic: "orders", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err))
	assert.Contains(t, err.Error(), "restart daprd")
	notReady := strings.Join(m.NotReady(), "\n")
	assert.Contains(t, notReady, `instance "orders" (daprd `+pid+`)`)
	assert.Contains(t, notReady, "restart daprd")

	_, err = d.client.Init(lost, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: md}})
	require.NoError(t, err)
	assert.Empty(t, m.NotReady(), "ready once daprd initialised the Component again")

	ghost := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "ghost")
	_, err = d.client.Features(ghost, &proto.FeaturesRequest{})
	require.Error(t, err)
	require.NotEmpty(t, m.NotReady())
	require.NoError(t, d.proc.Process.Kill())
	_ = d.proc.Wait()
	require.NoError(t, d.conn.Close())
	assert.Eventually(t, func() bool { return len(m.NotReady()) == 0 }, 15*time.Second, 20*time.Millisecond,
		"still not ready after the daprd exited: %v", m.NotReady())
}

// measuredDaprd starts a nats-server, a component process that keeps
// metrics, and one daprd that initialised Component "pubsub" with md. pid is
// the daprd's process id, as the series label it.
func measuredDaprd(t *testing.T) (m *metrics.Metrics, md map[string]string, d *fakeDaprd, pid string) {
	t.Helper()
	ns := natstest.Start(t)
	sp := startShared(t)
	m = metrics.New()
	sp.srv.UseMetrics(m)
	md = props(ns.ClientURL())
	d = sp.daprd(md)
	return m, md, d, strconv.Itoa(d.proc.Process.Pid)
}

// exit ends the daprd: gracefully, as daprd stops, its subscriptions end
// first (daprd cancels their streams) and then its connection; abruptly (a
// crash, kill -9), the connection closes under its open streams. Either
// way its process exits and its socket goes, as a restarted `dapr run`'s.
func (d *fakeDaprd) exit(graceful bool, streams ...*daprdStream) {
	if graceful {
		for _, s := range streams {
			s.cancel()
		}
		for _, s := range streams {
			<-s.ended
		}
	}
	_ = d.conn.Close()
	_ = d.proc.Process.Kill()
	_ = d.proc.Wait()
	_ = d.ln.Close()
}

// A component process outlives many daprds: on a laptop one serves several
// `dapr run` apps for days, each restarted on every change; in Kubernetes
// the component container outlives daprd restarts. Twenty daprd lifetimes,
// some two at once, subscribe, publish, ack some messages and leave others
// unacknowledged, and go gracefully or abruptly. Afterwards everything is
// back where it was after the first lifetime: goroutines, NATS connections
// and subscriptions, ephemeral consumers, the server's maps, the jetstream
// package's state, metrics series and heap; and every message published
// reached a subscriber.
func TestManyDaprdLifetimesLeaveNothingBehind(t *testing.T) {
	const lifetimes = 20
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	sp := startShared(t)
	m := metrics.New()
	sp.srv.UseMetrics(m)
	durable := props(ns.ClientURL(), "consumerID", "app", "maxInFlight", "5")
	ephemeral := props(ns.ClientURL(), "maxInFlight", "5")
	topics := []string{"life-a", "life-b", "life-c"}
	const eph = "life-eph"
	ctx := context.Background()

	var mu sync.Mutex
	var published []string   // to the durables' topics
	seen := map[string]int{} // by data, by any subscriber
	// read records what s gets and acks it unless hold says to leave it
	// unacknowledged, as an app still working on it when daprd goes.
	read := func(s *daprdStream, hold func(string) bool) {
		go func() {
			for msg := range s.msgs {
				data := string(msg.GetData())
				mu.Lock()
				seen[data]++
				mu.Unlock()
				if !hold(data) {
					_ = s.stream.Send(&proto.PullMessagesRequest{AckMessageId: msg.GetId()})
				}
			}
		}()
	}
	missing := func(want []string) []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, w := range want {
			if seen[w] == 0 {
				out = append(out, w)
			}
		}
		return out
	}
	consumers := func(stream string) []string {
		var out []string
		st, err := js.Stream(ctx, stream)
		if err != nil {
			return nil
		}
		names := st.ConsumerNames(ctx)
		for n := range names.Name() {
			out = append(out, n)
		}
		return out
	}
	// series counts the metrics series labelled with a daprd.
	series := func() int {
		fams, err := m.Registry().Gather()
		require.NoError(t, err)
		n := 0
		for _, f := range fams {
			for _, mt := range f.GetMetric() {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "daprd" {
						n++
					}
				}
			}
		}
		return n
	}
	// leftInServer names what the server still holds for some daprd.
	leftInServer := func() string {
		s := sp.srv
		s.mu.Lock()
		defer s.mu.Unlock()
		if n := len(s.instances) + len(s.uninitialized) + len(s.pulls) + len(s.conns) + len(s.watching); n > 0 {
			return fmt.Sprintf("%d instances, %d uninitialized, %d pulls, %d daprds with connections, %d watched",
				len(s.instances), len(s.uninitialized), len(s.pulls), len(s.conns), len(s.watching))
		}
		return ""
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// settledGoroutines polls until the goroutine count has not changed for
	// a few looks, as what closed instances started winds down.
	settledGoroutines := func() int {
		last, same := -1, 0
		natstest.AwaitT(t, 15*time.Second, "goroutines settle", func() error {
			n := runtime.NumGoroutine()
			if n == last {
				same++
			} else {
				last, same = n, 0
			}
			if same < 5 {
				return fmt.Errorf("%d goroutines, still changing", n)
			}
			return nil
		})
		return last
	}

	var baseGoroutines, baseClients int
	var baseSubs uint32
	var baseHeap uint64
	maxSeries := 0
	for i := range lifetimes {
		last := i == lifetimes-1
		// The topics of this lifetime: a and b always, c every third
		// lifetime (what c's subscribers left waits for a later one), all
		// of them in the last.
		mine := topics[:2]
		if i%3 == 0 || last {
			mine = topics
		}
		// Odd lifetimes leave one message of each topic unacknowledged.
		hold := func(data string) bool {
			return !last && i%2 == 1 && strings.HasPrefix(data, fmt.Sprintf("L%d-", i)) && strings.HasSuffix(data, "-3")
		}
		type member struct {
			d       *fakeDaprd
			streams []*daprdStream
		}
		members := []member{{d: sp.daprd(durable)}}
		if i%4 == 1 {
			members = append(members, member{d: sp.daprd(durable)}) // a second replica
		}
		for j := range members {
			for _, topic := range mine {
				s := members[j].d.subscribe(topic)
				read(s, hold)
				members[j].streams = append(members[j].streams, s)
			}
		}
		if i == 0 {
			for _, topic := range topics {
				natstest.WaitConsumer(t, js, topic, "app-"+topic)
			}
		}
		var want []string
		for _, topic := range mine {
			for k := range 5 {
				data := fmt.Sprintf("L%d-%s-%d", i, topic, k)
				require.NoError(t, members[0].d.publish(topic, data))
				want = append(want, data)
			}
		}
		if i%5 == 0 {
			// A daprd with no consumerID: its subscription has an
			// ephemeral consumer of its own.
			e := member{d: sp.daprd(ephemeral)}
			before := len(consumers(eph))
			s := e.d.subscribe(eph)
			read(s, func(string) bool { return false })
			e.streams = append(e.streams, s)
			natstest.AwaitT(t, 10*time.Second, "the ephemeral consumer", func() error {
				if n := len(consumers(eph)); n <= before {
					return fmt.Errorf("%d consumers on %s", n, eph)
				}
				return nil
			})
			for k := range 3 {
				data := fmt.Sprintf("L%d-%s-%d", i, eph, k)
				require.NoError(t, e.d.publish(eph, data))
				want = append(want, data)
			}
			members = append(members, e)
		}
		if i == 7 {
			// A call for a Component this process never initialised.
			ghost := grpcmd.AppendToOutgoingContext(ctx, InstanceHeader, "ghost")
			_, err := members[0].d.client.Features(ghost, &proto.FeaturesRequest{})
			require.Error(t, err)
		}
		mu.Lock()
		for _, w := range want {
			if !strings.Contains(w, eph) {
				published = append(published, w)
			}
		}
		mu.Unlock()
		natstest.AwaitT(t, 15*time.Second, fmt.Sprintf("lifetime %d receives what it published", i), func() error {
			if miss := missing(want); len(miss) > 0 {
				return fmt.Errorf("not received: %v", miss)
			}
			return nil
		})
		if last {
			natstest.AwaitT(t, 20*time.Second, "every message published in any lifetime received", func() error {
				mu.Lock()
				all := slices.Clone(published)
				mu.Unlock()
				if miss := missing(all); len(miss) > 0 {
					return fmt.Errorf("%d of %d never reached a subscriber: %v", len(miss), len(all), miss)
				}
				return nil
			})
			for _, topic := range topics {
				natstest.AwaitT(t, 10*time.Second, "consumer app-"+topic+" has nothing pending", func() error {
					c, err := js.Consumer(ctx, topic, "app-"+topic)
					if err != nil {
						return err
					}
					info, err := c.Info(ctx)
					if err != nil {
						return err
					}
					if info.NumAckPending+int(info.NumPending) > 0 {
						return fmt.Errorf("%d awaiting an ack, %d pending", info.NumAckPending, info.NumPending)
					}
					return nil
				})
			}
		}
		maxSeries = max(maxSeries, series())
		for j, mb := range members {
			mb.d.exit((i+j)%2 == 0, mb.streams...)
		}
		if i == 0 || last {
			natstest.AwaitT(t, 15*time.Second, "the exited daprds' instances closed", func() error {
				if left := leftInServer(); left != "" {
					return errors.New(left)
				}
				return nil
			})
		}
		if i == 0 {
			baseGoroutines, baseClients, baseSubs, baseHeap = settledGoroutines(), ns.NumClients(), ns.NumSubscriptions(), heap()
		}
	}

	t.Logf("after the first lifetime: %d goroutines, %d NATS clients, %d server subscriptions, heap %d KiB; at most %d daprd series during the run",
		baseGoroutines, baseClients, baseSubs, baseHeap>>10, maxSeries)
	var problems []string
	check := func(what string, cond func() error) {
		if err := natstest.Await(5*time.Second, 20*time.Millisecond, nil, cond); err != nil {
			problems = append(problems, what+": "+err.Error())
		}
	}
	check("NATS clients", func() error {
		if n := ns.NumClients(); n > baseClients {
			return fmt.Errorf("%d, %d after the first lifetime", n, baseClients)
		}
		return nil
	})
	check("nats-server subscriptions", func() error {
		if n := ns.NumSubscriptions(); n > baseSubs {
			return fmt.Errorf("%d, %d after the first lifetime", n, baseSubs)
		}
		return nil
	})
	check("consumers", func() error {
		var extra []string
		for _, topic := range append(slices.Clone(topics), eph) {
			for _, c := range consumers(topic) {
				if c != "app-"+topic {
					extra = append(extra, topic+"/"+c)
				}
			}
		}
		if len(extra) > 0 {
			return fmt.Errorf("ephemeral consumers of ended subscriptions stay: %v", extra)
		}
		return nil
	})
	check("metrics series", func() error {
		if n := series(); n > 0 {
			return fmt.Errorf("%d series labelled with a daprd that exited", n)
		}
		return nil
	})
	check("goroutines", func() error {
		if n := runtime.NumGoroutine(); n > baseGoroutines+5 {
			return fmt.Errorf("%d, %d after the first lifetime", n, baseGoroutines)
		}
		return nil
	})
	check("heap", func() error {
		if h := heap(); h > baseHeap+32<<20 {
			return fmt.Errorf("%d KiB, %d KiB after the first lifetime", h>>10, baseHeap>>10)
		}
		return nil
	})
	t.Logf("after %d lifetimes: %d goroutines, %d NATS clients, %d server subscriptions, heap %d KiB, %d daprd series",
		lifetimes, runtime.NumGoroutine(), ns.NumClients(), ns.NumSubscriptions(), heap()>>10, series())
	if len(problems) > 0 {
		t.Fatalf("after %d daprd lifetimes:\n%s", lifetimes, strings.Join(problems, "\n"))
	}
}

// daprd closes a Component (a hot reload removed, renamed or edited it) by
// closing the gRPC connection it dialled for that Component, the only sign
// the pluggable protocol gives: the instance's NATS connection must close
// rather than stay open until daprd exits. A connection gone idle (daprd's
// client drops it after 30 idle minutes) gives the same sign, and daprd
// then dials again and calls without an Init: that call must work, on an
// instance initialised again with the same metadata, whose counters go on.
func TestClosedConnectionClosesItsInstance(t *testing.T) {
	ns := natstest.Start(t)
	sp := startShared(t)
	m := metrics.New()
	sp.srv.UseMetrics(m)
	d := sp.daprd(props(ns.ClientURL()))
	require.NoError(t, d.publish("orders", "before"))
	clients := ns.NumClients()

	require.NoError(t, d.conn.Close())
	require.Eventually(t, func() bool { return ns.NumClients() == clients-1 }, 10*time.Second, 20*time.Millisecond,
		"the instance of a Component whose connection daprd closed keeps its NATS connection")

	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	_, err = proto.NewPubSubClient(conn).Publish(d.ctx, &proto.PublishRequest{PubsubName: "pubsub", Topic: "orders", Data: []byte("after")})
	require.NoError(t, err, "a call after daprd dialled again, without Init")
	assert.Equal(t, clients, ns.NumClients())
	fams, err := m.Registry().Gather()
	require.NoError(t, err)
	var total float64
	for _, f := range fams {
		if f.GetName() == "jetstream_pubsub_publish_total" {
			for _, mt := range f.GetMetric() {
				total += mt.GetCounter().GetValue()
			}
		}
	}
	assert.Equal(t, 2.0, total, "publish_total after the instance was initialised again")
}
