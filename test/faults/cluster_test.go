//go:build faults

package faults

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
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
