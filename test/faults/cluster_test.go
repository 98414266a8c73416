//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// procCluster is a JetStream cluster of nats-server processes.
type procCluster struct {
	nodes []*procNATS
	names []string
}

// procStartCluster runs n nats-server processes with routes to each other,
// JetStream on distinct store dirs and server_name n1..nN, and waits (bounded)
// until the cluster can place a stream with n replicas.
func procStartCluster(t *testing.T, prefix string, n int, extraConfig ...string) *procCluster {
	t.Helper()
	clientPorts := make([]int, n)
	routePorts := make([]int, n)
	for i := range n {
		clientPorts[i], routePorts[i] = natstest.FreePortT(t), natstest.FreePortT(t)
	}
	routes := make([]string, n)
	for i, p := range routePorts {
		routes[i] = fmt.Sprintf("%q", fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	c := &procCluster{}
	for i := range n {
		name := fmt.Sprintf("%s-n%d", prefix, i+1)
		config := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
jetstream {
  store_dir: %q
}
cluster {
  name: %q
  listen: "127.0.0.1:%d"
  routes: [%s]
}
%s
`, name, clientPorts[i], filepath.Join(t.TempDir(), name), prefix, routePorts[i], strings.Join(routes, ", "), strings.Join(extraConfig, "\n"))
		node := procNewNATSConfig(t, name, clientPorts[i], config)
		procStart(t, node.Proc)
		c.nodes = append(c.nodes, node)
		c.names = append(c.names, name)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, node := range c.nodes {
		if err := node.WaitFor(time.Until(deadline), 100*time.Millisecond, procJetStreamAnswers(node.url())); err != nil {
			t.Fatalf("cluster %s: %v", prefix, err)
		}
	}
	// A meta leader answers account info; placing an R<n> stream also needs
	// every peer to have joined.
	_, js := procClient(t, c.urls())
	placesStream := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "PROBE", Subjects: []string{"probe." + prefix}, Replicas: n, Storage: natsjs.MemoryStorage})
		if err == nil {
			err = js.DeleteStream(ctx, "PROBE")
		}
		return err
	}
	if err := natstest.Await(time.Until(deadline), 250*time.Millisecond, nil, placesStream); err != nil {
		t.Fatalf("cluster %s cannot place a stream with %d replicas within 60s: %v", prefix, n, err)
	}
	return c
}

// urls is the comma-separated client URL list of every node.
func (c *procCluster) urls() string {
	u := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		u[i] = n.url()
	}
	return strings.Join(u, ",")
}

func (c *procCluster) node(serverName string) *procNATS {
	for i, n := range c.names {
		if n == serverName {
			return c.nodes[i]
		}
	}
	return nil
}

// TestFaultClusterLeaderKilled runs a publish and consume run on a stream
// with three replicas in a three-node cluster and kills -9 the stream leader
// in the middle: a new leader takes over, the component follows it, and
// nothing acknowledged is lost.
func TestFaultClusterLeaderKilled(t *testing.T) {
	total := faultMessages("FAULT_CLUSTER_MESSAGES", 20_000)
	const (
		topic  = "faults.cluster"
		stream = "FAULTCLUSTER"
	)
	start := time.Now()
	cl := procStartCluster(t, "faults", 3)
	ready := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	base := map[string]string{
		"natsURL": cl.urls(), "reconnectWait": "100ms", "consumerID": "cluster",
		"streamName": stream, "streamSubjects": topic, "streamReplicas": "3",
	}
	pub := faultPubSub(t, "fault-cluster-pub", base)
	l := newFaultLedger("cl", total)
	subProps := faultProps(base, map[string]string{
		"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s", "maxInFlight": "500", "maxAckPending": "2000",
	})
	for i := range 2 {
		sub := faultPubSub(t, fmt.Sprintf("fault-cluster-sub%d", i), subProps)
		if err := sub.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, faultHandler(l)); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	stats := &faultStats{}
	published := faultRunPublishers(ctx, pub, topic, l, total, 4, 250, stats)

	if !l.waitPublished(ctx, total*3/10) {
		t.Fatalf("only %d of %d published before the kill", l.publishedCount(), total)
	}
	_, js := procClient(t, cl.urls())
	ictx, icancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := js.Stream(ictx, stream)
	icancel()
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	info := st.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("stream %s: replicas %d, cluster %+v; want 3 replicas with a leader", stream, info.Config.Replicas, info.Cluster)
	}
	oldLeader := info.Cluster.Leader
	victim := cl.node(oldLeader)
	if victim == nil {
		t.Fatalf("stream leader %q is none of %v", oldLeader, cl.names)
	}
	victim.Kill()
	killedAt := time.Now()
	t.Logf("killed -9 stream leader %s at %d published / %d handled", oldLeader, l.publishedCount(), l.handledCount())

	select {
	case err := <-published:
		if err != nil {
			t.Errorf("publishers gave up: %v", err)
		}
	case <-ctx.Done():
		t.Errorf("publishers did not finish in time")
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d before the deadline", l.handledCount(), total)
	}
	took := time.Since(start)
	killedToDone := time.Since(killedAt)
	stored := faultQuiesce(t, cl.urls(), topic, 30*time.Second)

	newLeader := ""
	ictx, icancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer icancel()
	if info, err := st.Info(ictx); err != nil {
		t.Errorf("stream info after the kill: %v", err)
	} else {
		if info.Cluster != nil {
			newLeader = info.Cluster.Leader
		}
		if newLeader == "" || newLeader == oldLeader {
			t.Errorf("stream leader after the kill is %q (was %q)", newLeader, oldLeader)
		}
	}
	faultReport(t, "cluster-leader-kill9", l, took, fmt.Sprintf("R3, leader %s killed -9, new leader %s; run finished %s after the kill; cluster ready in %s; %s; stored=%d",
		oldLeader, newLeader, faultDur(killedToDone), faultDur(ready), stats, stored))
}

// clusterSysConfig gives a cluster a system account, which the requests an
// operator makes of the whole cluster (meta leader step-down, peer-remove)
// need. Clients without credentials are the app's account.
const clusterSysConfig = `accounts {
  SYS { users = [{user: "sys", password: "sys"}] }
  APP { jetstream: enabled, users = [{user: "app", password: "app"}] }
}
system_account: SYS
no_auth_user: app`

// clusterOp is what an operation of a NATS operator on a running cluster
// works with.
type clusterOp struct {
	cl              *procCluster
	js              natsjs.JetStream
	nc, sys         *nats.Conn // the app's account, the system account
	stream, durable string
	l               *faultLedger
	steps           []opStep
	// waitsForPublish is set by an operation during which JetStream may
	// hold back a stored message until the next one is stored: delivery may
	// then stop for as long as publishing does.
	waitsForPublish bool
}

// opStep is one action of an operation, and when it began.
type opStep struct {
	at   time.Time
	what string
}

// step records that the operation begins what.
func (o *clusterOp) step(what string) { o.steps = append(o.steps, opStep{time.Now(), what}) }

// during names the last step that began before at.
func (o *clusterOp) during(at time.Time) string {
	what := "before the operation"
	for _, s := range o.steps {
		if s.at.After(at) {
			break
		}
		what = fmt.Sprintf("%s (begun %s before)", s.what, faultDur(at.Sub(s.at)))
	}
	return what
}

// api makes a JetStream API request, as the nats CLI does, and fails t
// unless JetStream says it succeeded.
func (o *clusterOp) api(t *testing.T, nc *nats.Conn, subject string, body []byte) {
	t.Helper()
	msg, err := nc.Request(subject, body, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	var resp struct {
		Error *natsjs.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatalf("%s: %v in %q", subject, err, msg.Data)
	}
	if resp.Error != nil {
		t.Fatalf("%s: %v", subject, resp.Error)
	}
}

// leaders returns the current leaders of the stream and of the durable, ""
// where there is none or the request failed.
func (o *clusterOp) leaders() (stream, consumer string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := o.js.Stream(ctx, o.stream)
	if err != nil {
		return "", ""
	}
	if ci := st.CachedInfo().Cluster; ci != nil {
		stream = ci.Leader
	}
	c, err := st.Consumer(ctx, o.durable)
	if err != nil {
		return stream, ""
	}
	if ci := c.CachedInfo().Cluster; ci != nil {
		consumer = ci.Leader
	}
	return stream, consumer
}

// delivers waits until the subscriptions handle more messages, or have
// caught up with the publisher, after what.
func (o *clusterOp) delivers(t *testing.T, what string) {
	t.Helper()
	h := o.l.handledCount()
	natstest.AwaitT(t, 10*time.Second, "delivery after "+what, func() error {
		if n := o.l.handledCount(); n < h+50 && n < o.l.publishedCount() {
			return fmt.Errorf("handled %d, %d published", n, o.l.publishedCount())
		}
		return nil
	})
}

// runClusterOp runs an operation on a cluster of nodes nats-server processes
// (three, or more where the operation needs a spare) while an app publishes
// to an R3 stream, one message every 5 ms, and two subscribers sharing a
// durable work through a backlog. Nothing acknowledged may be lost, delivery
// and publishing may stop for no longer than while a node restarts, and Ping
// must succeed again at the end. op returns a note for the FAULT line.
func runClusterOp(t *testing.T, prefix string, nodes int, subExtra map[string]string, op func(t *testing.T, o *clusterOp) string) {
	const backlog, total = 3000, 5000
	start := time.Now()
	cl := procStartCluster(t, prefix, nodes, clusterSysConfig)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	topic, stream, base := clusterTopic(cl, prefix)
	pub := faultPubSub(t, "fault-"+prefix+"-pub", base)
	l := newFaultLedger(prefix, total)
	stats := &faultStats{}
	if err := <-faultRunPublishers(ctx, pub, topic, l, backlog, 4, 250, stats); err != nil {
		t.Fatalf("publishing the backlog: %v", err)
	}
	subProps := faultProps(base, map[string]string{"deliverPolicy": "all", "ackWait": "5s", "heartbeat": "1s"}, subExtra)
	var lastHandled atomic.Int64
	subs := []*jetstream.PubSub{pub}
	for i := range 2 {
		sub := faultPubSub(t, fmt.Sprintf("fault-%s-sub%d", prefix, i), subProps)
		subs = append(subs, sub)
		handle := faultHandler(l)
		err := sub.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, func(ctx context.Context, m *pubsub.NewMessage) error {
			time.Sleep(time.Millisecond) // the app's work, so that the backlog lasts
			err := handle(ctx, m)
			lastHandled.Store(time.Now().UnixNano())
			return err
		})
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	var lastPublished atomic.Int64
	published := pacedPublisher(ctx, pub, topic, l, backlog, total, 5*time.Millisecond, stats, &lastPublished)
	if !l.waitHandled(ctx, backlog/6) {
		t.Fatalf("handled only %d of the backlog of %d", l.handledCount(), backlog)
	}
	nc, js := procClient(t, cl.urls())
	sys, err := nats.Connect(cl.urls(), nats.UserInfo("sys", "sys"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect as the system account: %v", err)
	}
	defer sys.Close()
	o := &clusterOp{cl: cl, js: js, nc: nc, sys: sys, stream: stream, durable: metadata.SanitizeName(prefix, topic), l: l}
	consumerR := 3
	if r, err := strconv.Atoi(subExtra["replicas"]); err == nil {
		consumerR = r
	}
	natstest.AwaitT(t, 30*time.Second, "stream and consumer current", func() error { return replicasAt(o, 3, consumerR) })

	stall := watchGap(&lastHandled, func() bool { return l.publishedCount() > l.handledCount() })
	pubStall := watchGap(&lastPublished, func() bool { return l.publishedCount() < total })
	opStart, errsBefore := time.Now(), stats.count()
	note := op(t, o)
	t.Logf("%s done in %s; %d published / %d handled", prefix, faultDur(time.Since(opStart)), l.publishedCount(), l.handledCount())

	if err := <-published; err != nil {
		t.Errorf("publisher gave up: %v", err)
	}
	if !l.waitHandled(ctx, total) {
		t.Errorf("handled %d of %d before the deadline", l.handledCount(), total)
	}
	longest, ended := stall()
	longestPub, pubEnded := pubStall()
	deliveryBound := rollingStallBound
	if o.waitsForPublish {
		deliveryBound = max(deliveryBound, longestPub+time.Second)
	}
	if longest > deliveryBound {
		t.Errorf("delivery stopped for %s, from %s (bound %s)", faultDur(longest), o.during(ended.Add(-longest)), deliveryBound)
	}
	if longestPub > publishStallBound {
		t.Errorf("publishing stopped for %s, from %s (bound %s)", faultDur(longestPub), o.during(pubEnded.Add(-longestPub)), publishStallBound)
	}
	for i, ps := range subs {
		if err := natstest.Await(5*time.Second, 100*time.Millisecond, nil, func() error { return ps.Ping(ctx) }); err != nil {
			t.Errorf("Ping of component %d: %v", i, err)
		}
	}
	stored := faultQuiesce(t, cl.urls(), topic, 30*time.Second)
	faultReport(t, "cluster-"+prefix, l, time.Since(start), fmt.Sprintf("%s; delivery stopped for at most %s (from %s), publishing for at most %s (from %s); %d publish errors from the operation on; %s; stored=%d",
		note, faultDur(longest), o.during(ended.Add(-longest)), faultDur(longestPub), o.during(pubEnded.Add(-longestPub)), stats.count()-errsBefore, stats, stored))
}

// TestFaultClusterStepDown asks the stream's leader to step down three times
// in a row, then the durable's leader three times (nats stream cluster
// step-down, nats consumer cluster step-down), each once delivery resumed.
func TestFaultClusterStepDown(t *testing.T) {
	runClusterOp(t, "stepdown", 3, nil, func(t *testing.T, o *clusterOp) string {
		var moves []string
		for i := range 6 {
			what, subject := "stream", "$JS.API.STREAM.LEADER.STEPDOWN."+o.stream
			if i >= 3 {
				what, subject = "consumer", "$JS.API.CONSUMER.LEADER.STEPDOWN."+o.stream+"."+o.durable
			}
			leader := func() string {
				s, c := o.leaders()
				if what == "stream" {
					return s
				}
				return c
			}
			var old string
			natstest.AwaitT(t, 10*time.Second, what+" leader", func() error {
				if old = leader(); old == "" {
					return errors.New("none")
				}
				return nil
			})
			o.step(what + " step-down")
			o.api(t, o.nc, subject, nil)
			natstest.AwaitT(t, 10*time.Second, "a new "+what+" leader", func() error {
				if now := leader(); now == "" || now == old {
					return fmt.Errorf("leader %q", now)
				}
				return nil
			})
			moves = append(moves, what+" "+old+"→"+leader())
			o.delivers(t, what+" step-down")
		}
		return "R3, step-downs: " + strings.Join(moves, ", ")
	})
}

// TestFaultClusterScaleStream scales the stream from three replicas to one
// and back (nats stream edit --replicas), with a durable whose replicas
// follow the stream and with one whose metadata sets replicas: 3. JetStream
// lowers the latter to one with the stream and leaves it there when the
// stream has three again: the component says so, and nats consumer edit
// sets them back.
func TestFaultClusterScaleStream(t *testing.T) {
	for _, c := range []struct{ name, replicas string }{{"inherited", ""}, {"set", "3"}} {
		t.Run(c.name, func(t *testing.T) {
			extra := map[string]string{}
			if c.replicas != "" {
				extra["replicas"] = c.replicas
			}
			runClusterOp(t, "scale"+c.name, 3, extra, func(t *testing.T, o *clusterOp) string {
				// A message stored as the stream moves to its new replicas
				// may reach the consumer only once the next one is stored,
				// with pull requests open and renewed meanwhile; and the
				// next one may wait out the PubAck timeout.
				o.waitsForPublish = true
				var steps []string
				for _, r := range []int{1, 3} {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					st, err := o.js.Stream(ctx, o.stream)
					if err != nil {
						cancel()
						t.Fatalf("stream info: %v", err)
					}
					cfg := st.CachedInfo().Config
					cfg.Replicas = r
					o.step(fmt.Sprintf("stream scaled to R%d", r))
					_, err = o.js.UpdateStream(ctx, cfg)
					cancel()
					if err != nil {
						t.Fatalf("scale the stream to R%d: %v", r, err)
					}
					scaled := time.Now()
					consumerR := r
					if c.replicas != "" {
						consumerR = 1
					}
					natstest.AwaitT(t, 30*time.Second, fmt.Sprintf("stream at R%d, consumer at R%d", r, consumerR), func() error {
						return replicasAt(o, r, consumerR)
					})
					o.delivers(t, fmt.Sprintf("scaling to R%d", r))
					steps = append(steps, fmt.Sprintf("R%d in %s", r, faultDur(time.Since(scaled))))
				}
				if c.replicas == "" {
					return "stream scaled R3→R1→R3, consumer replicas inherited: " + strings.Join(steps, ", ")
				}
				const why = "JetStream lowered them to the stream's when the stream was scaled down"
				natstest.AwaitT(t, 10*time.Second, "a warning that says why the durable has one replica", natstest.Check(func() bool { return logsContain(why) }))
				o.scaleConsumer(t, 3)
				return "stream scaled R3→R1→R3, consumer replicas 3 set: " + strings.Join(steps, ", ") + ", consumer left at R1 by JetStream, edited back to R3"
			})
		})
	}
}

// replicasAt reports nil once the stream has r peers and the durable rc, each
// with a leader and every other peer current.
func replicasAt(o *clusterOp, r, rc int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := o.js.Stream(ctx, o.stream)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	c, err := st.Consumer(ctx, o.durable)
	if err != nil {
		return fmt.Errorf("consumer info: %w", err)
	}
	for what, ci := range map[string]*natsjs.ClusterInfo{"stream": st.CachedInfo().Cluster, "consumer": c.CachedInfo().Cluster} {
		want := r
		if what == "consumer" {
			want = rc
		}
		if ci == nil || ci.Leader == "" || len(ci.Replicas) != want-1 {
			return fmt.Errorf("%s: no leader with %d other peers: %+v", what, want-1, ci)
		}
		for _, p := range ci.Replicas {
			if !p.Current || p.Offline {
				return fmt.Errorf("%s: peer %s is not current", what, p.Name)
			}
		}
	}
	return nil
}

// TestFaultClusterConsumerScaledUp gives a durable of one replica three
// (nats consumer edit --replicas 3) under subscriptions with a long
// heartbeat: delivery must go on across the move of the consumer to its new
// replica group, not wait for heartbeats to go missing, which would stop it
// for 20s.
func TestFaultClusterConsumerScaledUp(t *testing.T) {
	runClusterOp(t, "scaleup", 3, map[string]string{"replicas": "1", "heartbeat": "10s"}, func(t *testing.T, o *clusterOp) string {
		took := o.scaleConsumer(t, 3)
		return fmt.Sprintf("durable of 1 replica edited to 3 (heartbeat 10s): R3 in %s", faultDur(took))
	})
}

// scaleConsumer gives the durable r replicas (nats consumer edit
// --replicas), waits until they are current on an R3 stream and delivery
// goes on, and returns how long the replicas took.
func (o *clusterOp) scaleConsumer(t *testing.T, r int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := o.js.Consumer(ctx, o.stream, o.durable)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	cfg := cons.CachedInfo().Config
	cfg.Replicas = r
	what := fmt.Sprintf("nats consumer edit --replicas %d", r)
	o.step(what)
	if _, err := o.js.UpdateConsumer(ctx, o.stream, cfg); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	edited := time.Now()
	natstest.AwaitT(t, 30*time.Second, fmt.Sprintf("consumer at R%d", r), func() error { return replicasAt(o, 3, r) })
	took := time.Since(edited)
	o.delivers(t, what)
	return took
}

// TestFaultClusterStreamCreatedAtOnce has four replicas publish the first
// message to each of several new topics at the same moment, on a cluster
// whose streams have three replicas: one replica creates each stream, and the
// others' publishes go into it rather than fail, although JetStream may not
// yet answer for the stream when it refuses their creates.
func TestFaultClusterStreamCreatedAtOnce(t *testing.T) {
	cl := procStartCluster(t, "createonce", 3, clusterSysConfig)
	_, _, base := clusterTopic(cl, "createonce")
	delete(base, "streamName")
	delete(base, "streamSubjects")
	var replicas []*jetstream.PubSub
	for i := range 4 {
		replicas = append(replicas, faultPubSub(t, fmt.Sprintf("fault-createonce-%d", i), base))
	}
	const topics = 8
	failed := make(chan error, topics*len(replicas))
	for k := range topics {
		topic := fmt.Sprintf("faults.createonce.t%d", k)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, ps := range replicas {
			wg.Go(func() {
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: []byte(strconv.Itoa(i))}); err != nil {
					failed <- fmt.Errorf("replica %d, topic %s: %w", i, topic, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	close(failed)
	nFailed := len(failed)
	for err := range failed {
		t.Error(err)
	}
	_, js := procClient(t, cl.urls())
	for k := range topics {
		topic := fmt.Sprintf("faults.createonce.t%d", k)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		name, err := js.StreamNameBySubject(ctx, topic)
		if err == nil {
			var st natsjs.Stream
			if st, err = js.Stream(ctx, name); err == nil && st.CachedInfo().State.Msgs != uint64(len(replicas)) {
				err = fmt.Errorf("stream %s holds %d messages, want %d", name, st.CachedInfo().State.Msgs, len(replicas))
			}
		}
		cancel()
		if err != nil {
			t.Errorf("topic %s: %v", topic, err)
		}
	}
	t.Logf("FAULT cluster-stream-created-at-once: %d topics, each published to first by %d replicas at once on R3; %d publishes failed", topics, len(replicas), nFailed)
}

// TestFaultClusterPeerRemoved stops the server that leads the stream in a
// cluster of four and removes it from the cluster for good (nats server raft
// peer-remove): the stream and the durable place their third replica on the
// spare node.
func TestFaultClusterPeerRemoved(t *testing.T) {
	runClusterOp(t, "peerremove", 4, nil, func(t *testing.T, o *clusterOp) string {
		leader, _ := o.leaders()
		victim := o.cl.node(leader)
		if victim == nil {
			t.Fatalf("stream leader %q is none of %v", leader, o.cl.names)
		}
		o.step("stop of " + leader)
		if err := victim.Stop(time.Minute); err != nil {
			t.Fatalf("stop %s: %v", leader, err)
		}
		killed := time.Now()
		natstest.AwaitT(t, 10*time.Second, "a new stream leader", func() error {
			if now, _ := o.leaders(); now == "" || now == leader {
				return fmt.Errorf("leader %q", now)
			}
			return nil
		})
		o.delivers(t, "the stop")
		body, _ := json.Marshal(map[string]string{"peer": leader})
		o.step("peer-remove of " + leader)
		natstest.AwaitT(t, 20*time.Second, "peer-remove "+leader, func() error {
			msg, err := o.sys.Request("$JS.API.SERVER.REMOVE", body, 5*time.Second)
			if err != nil {
				return err
			}
			var resp struct {
				Error *natsjs.APIError `json:"error"`
			}
			if err := json.Unmarshal(msg.Data, &resp); err != nil {
				return err
			}
			if resp.Error != nil {
				return resp.Error
			}
			return nil
		})
		removed := time.Now()
		natstest.AwaitT(t, 30*time.Second, "stream and consumer on three live peers", func() error {
			if err := replicasAt(o, 3, 3); err != nil {
				return err
			}
			s, c := o.leaders()
			if s == leader || c == leader {
				return fmt.Errorf("leaders %s, %s", s, c)
			}
			return nil
		})
		o.delivers(t, "the peer-remove")
		return fmt.Sprintf("R3 on 4 nodes, stream leader %s stopped and peer-removed %s later; replicas placed again %s after the removal",
			leader, faultDur(removed.Sub(killed)), faultDur(time.Since(removed)))
	})
}

// TestFaultClusterMetaStepDown asks JetStream's meta leader to step down
// three times in a row (nats server cluster step-down).
func TestFaultClusterMetaStepDown(t *testing.T) {
	runClusterOp(t, "metastepdown", 3, nil, func(t *testing.T, o *clusterOp) string {
		var moves []string
		for range 3 {
			old := metaLeader(t, o.sys)
			o.step("meta leader step-down")
			o.api(t, o.sys, "$JS.API.META.LEADER.STEPDOWN", nil)
			var now string
			natstest.AwaitT(t, 10*time.Second, "a new meta leader", func() error {
				if now = metaLeader(t, o.sys); now == "" || now == old {
					return fmt.Errorf("meta leader %q", now)
				}
				return nil
			})
			moves = append(moves, old+"→"+now)
			o.delivers(t, "meta leader step-down")
		}
		return "R3, meta leader step-downs: " + strings.Join(moves, ", ")
	})
}

// metaLeader asks a server of the cluster which server is JetStream's meta
// leader; "" while there is none.
func metaLeader(t *testing.T, sys *nats.Conn) string {
	t.Helper()
	msg, err := sys.Request("$SYS.REQ.SERVER.PING.JSZ", nil, 5*time.Second)
	if err != nil {
		return ""
	}
	var resp struct {
		Data struct {
			Meta *struct {
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
		} `json:"data"`
	}
	if json.Unmarshal(msg.Data, &resp) != nil || resp.Data.Meta == nil {
		return ""
	}
	return resp.Data.Meta.Leader
}

// clusterTopic names the topic and R3 stream of the scenario prefix on cl,
// and the component metadata that publishes and subscribes to it.
func clusterTopic(cl *procCluster, prefix string) (topic, stream string, base map[string]string) {
	topic = "faults." + prefix
	stream = strings.ToUpper("fault" + prefix)
	return topic, stream, map[string]string{
		"natsURL": cl.urls(), "reconnectWait": "100ms", "consumerID": prefix,
		"streamName": stream, "streamSubjects": topic, "streamReplicas": "3",
	}
}
