package jetstream

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// edge is an edge site: a leaf nats-server that the app connects to, linked
// to a hub nats-server whose JetStream, in domain "hub", holds the streams.
// The leaf has its own JetStream in domain "leaf", unless made without.
type edge struct {
	dir      string
	hub      *server.Server
	leaf     *server.Server
	hubPort  int // client port of the hub
	linkPort int // leaf node port of the hub
	// hubJS and leafJS are raw clients of each server's own JetStream.
	hubJS  natsjs.JetStream
	leafJS natsjs.JetStream
}

// edgeAccounts are the accounts of both servers: the app's account A, with
// JetStream, and the system account.
const edgeAccounts = `
accounts: {
  A: {jetstream: enabled, users: [{user: a, password: a}]}
  SYS: {users: [{user: sys, password: sys}]}
}
system_account: SYS
`

// startEdge runs a hub and a leaf linked in account A. leafJetStream gives
// the leaf a JetStream of its own, in domain "leaf".
func startEdge(t *testing.T, leafJetStream bool) *edge {
	t.Helper()
	e := &edge{dir: t.TempDir(), hubPort: natstest.FreePortT(t), linkPort: natstest.FreePortT(t)}
	e.startHub(t)
	leafJS := ""
	if leafJetStream {
		leafJS = fmt.Sprintf("jetstream: {domain: leaf, store_dir: %q}", filepath.Join(e.dir, "leaf"))
	}
	e.leaf = runConf(t, e.dir, "leaf", fmt.Sprintf(`
listen: "127.0.0.1:-1"
server_name: leaf
%s
%s
leafnodes: {reconnect: "100ms", remotes: [{url: "nats://a:a@127.0.0.1:%d", account: A}]}
`, edgeAccounts, leafJS, e.linkPort))
	e.waitLinked(t)
	e.hubJS = rawJS(t, e.hub.ClientURL())
	if leafJetStream {
		e.leafJS = rawJS(t, e.leaf.ClientURL())
	}
	return e
}

// startHub starts the hub, on the same ports and store each time.
func (e *edge) startHub(t *testing.T) {
	t.Helper()
	e.hub = runConf(t, e.dir, "hub", fmt.Sprintf(`
listen: "127.0.0.1:%d"
server_name: hub
%s
jetstream: {domain: hub, store_dir: %q}
leafnodes: {listen: "127.0.0.1:%d"}
`, e.hubPort, edgeAccounts, filepath.Join(e.dir, "hub"), e.linkPort))
}

// waitLinked waits until the leaf is connected to the hub.
func (e *edge) waitLinked(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool { return e.leaf.NumLeafNodes() == 1 && e.hub.NumLeafNodes() == 1 },
		waitFor, tick, "the leaf did not connect to the hub")
}

// stopHub shuts the hub down, as in an outage of the central site.
func (e *edge) stopHub(t *testing.T) {
	t.Helper()
	natstest.Stop(e.hub)
	require.Eventually(t, func() bool { return e.leaf.NumLeafNodes() == 0 }, waitFor, tick, "the leaf still sees the hub")
}

// runConf runs a nats-server from a configuration file written into dir,
// until the test ends.
func runConf(t *testing.T, dir, name, conf string) *server.Server {
	t.Helper()
	path := filepath.Join(dir, name+".conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	o, err := server.ProcessConfigFile(path)
	require.NoError(t, err)
	o.NoLog, o.NoSigs = true, true
	ns := natstest.Run(t, o)
	t.Cleanup(func() { natstest.Stop(ns) })
	return ns
}

// rawJS is a plain client of the JetStream of the server at url, as user a.
func rawJS(t *testing.T, url string) natsjs.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo("a", "a"), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	require.NoError(t, err)
	return js
}

// openOnLeaf initialises the component on the leaf, with domain "hub".
func (e *edge) openOnLeaf(t *testing.T, props map[string]string) (*PubSub, *logBuffer) {
	t.Helper()
	md := map[string]string{"user": "a", "password": "a", "domain": "hub", "reconnectWait": "100ms"}
	for k, v := range props {
		md[k] = v
	}
	return open(t, e.leaf.ClientURL(), md)
}

// leafHasNothing checks that the leaf's own JetStream got no stream from
// the component.
func (e *edge) leafHasNothing(t *testing.T) {
	t.Helper()
	if e.leafJS != nil {
		assert.Empty(t, streamNames(t, e.leafJS), "the component made streams in the leaf's own JetStream")
	}
}

// An edge app on a leaf node uses the hub's JetStream by domain: the stream
// is made on the hub, not in the leaf's own JetStream, and publishing,
// delivery, acks, redelivery, dead letters and delayed delivery all work
// through the leaf.
func TestDomainThroughLeafNode(t *testing.T) {
	t.Parallel()
	e := startEdge(t, true)
	ps, _ := e.openOnLeaf(t, map[string]string{"consumerID": "app", "ackWait": "1s", "maxDeliver": "2", "deadLetterSubject": "dead.{topic}"})
	require.NoError(t, ps.Ping(ctx(t)))

	h, got := failing(1)
	subscribe(t, ps, "orders", nil, h)
	publish(t, ps, "orders", "one", nil)
	assert.Contains(t, streamNames(t, e.hubJS), "orders", "the stream is not on the hub")
	e.leafHasNothing(t)

	first, again := recv(t, got, waitFor), recv(t, got, waitFor)
	assert.Equal(t, "one", first.data)
	assert.Equal(t, "one", again.data, "a failed message is not delivered again")
	settledConsumer(t, e.hubJS, "orders", "app-orders")
	nothing(t, got, 1500*time.Millisecond) // acked: not again after ackWait

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{PubsubName: "test", Topic: "orders", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "1", Event: []byte("b1"), ContentType: "text/plain"},
		{EntryId: "2", Event: []byte("b2"), ContentType: "text/plain"},
	}})
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	var bulk []string
	for range 4 {
		bulk = append(bulk, recv(t, got, waitFor).data)
	}
	slices.Sort(bulk)
	assert.Equal(t, []string{"b1", "b1", "b2", "b2"}, bulk)

	deadLettered(t, ps, "poison", "dead.poison")

	delayed(t, ps, "orders", got)
	recv(t, got, waitFor) // its failed first delivery comes again

	e.leafHasNothing(t)
	assert.Subset(t, streamNames(t, e.hubJS), []string{"orders", "poison"})
}

// A leaf node without JetStream of its own: the hub's JetStream, reached by
// domain, does everything. Without domain, the hub does not answer the
// leaf's plain JetStream API requests, and the error says to set it.
func TestDomainThroughLeafNodeWithoutJetStream(t *testing.T) {
	t.Parallel()
	e := startEdge(t, false)
	unset, _ := e.openOnLeaf(t, map[string]string{"domain": ""})
	err := unset.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("lost?")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no JetStream server answered: enable JetStream on the NATS servers for this account, or set domain")

	ps, _ := e.openOnLeaf(t, map[string]string{"consumerID": "app"})
	h, got := failing(1)
	subscribe(t, ps, "orders", nil, h)
	publish(t, ps, "orders", "one", nil)
	assert.Equal(t, "one", recv(t, got, waitFor).data)
	assert.Equal(t, "one", recv(t, got, waitFor).data, "a failed message is not delivered again")
	assert.Equal(t, uint64(1), msgCount(t, e.hubJS, "orders"))
	settledConsumer(t, e.hubJS, "orders", "app-orders")
}

// A domain that no JetStream has: the first publish and subscription fail at
// once, naming the domain, rather than with nats.go's bare "no responders".
func TestWrongDomainIsNamed(t *testing.T) {
	t.Parallel()
	e := startEdge(t, true)
	ps, log := e.openOnLeaf(t, map[string]string{"domain": "nosuch", "consumerID": "app"})
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), `domain "nosuch"`)
	assert.Contains(t, err.Error(), "jetstream.domain", "the error does not say what domain must name")

	h, _ := collect()
	subscribe(t, ps, "orders", nil, h)
	require.Eventually(t, func() bool { return strings.Contains(log.String(), `domain \"nosuch\"`) }, waitFor, tick,
		"the subscription's failure does not name the domain")
	e.leafHasNothing(t)
	assert.Empty(t, streamNames(t, e.hubJS))
}

// The hub goes away while the app stays connected to the leaf: publishes
// fail at once, naming the domain, and work again once the hub is back.
// What waited is delivered once it is; what the app handled meanwhile,
// whose ack the hub never got, is acknowledged again, not handed to the app
// twice.
func TestHubOutageThroughLeafNode(t *testing.T) {
	t.Parallel()
	e := startEdge(t, true)
	ps, _ := e.openOnLeaf(t, map[string]string{"consumerID": "app", "ackWait": "2s"})
	release := make(chan struct{})
	got := make(chan string, 100)
	subscribe(t, ps, "orders", nil, func(_ context.Context, m *pubsub.NewMessage) error {
		got <- string(m.Data)
		if string(m.Data) == "held" {
			<-release
		}
		return nil
	})
	for _, d := range []string{"held", "waiting1", "waiting2"} {
		publish(t, ps, "orders", d, nil)
	}
	assert.Equal(t, "held", recv(t, got, waitFor))

	e.stopHub(t)
	close(release) // its ack finds no hub
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("during")})
	require.Error(t, err)
	t.Log(err)
	assert.True(t, IsRetriable(err), "a publish while the hub is away is not retriable: %v", err)
	assert.Contains(t, err.Error(), `domain "hub"`)
	// Ping, and so the healthcheck command, and /readyz say so from the
	// first request that went unanswered, also for an app that only
	// publishes.
	pingErr := ps.Ping(ctx(t))
	require.Error(t, pingErr, "Ping passes while no JetStream answers")
	assert.Contains(t, pingErr.Error(), `no JetStream server answered in domain "hub"`)
	assert.Contains(t, ps.Stats().Connection.Problem, `no JetStream server answered in domain "hub"`)

	e.startHub(t)
	e.waitLinked(t)
	require.Eventually(t, func() bool { return ps.Stats().Connection.Problem == "" }, 2*waitFor, tick,
		"the problem is still reported once the hub is back")
	require.NoError(t, ps.Ping(ctx(t)))
	require.Eventually(t, func() bool {
		return ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("after")}) == nil
	}, waitFor, tick, "publishing does not work again once the hub is back")
	want := map[string]bool{"waiting1": true, "waiting2": true, "after": true}
	seen := map[string]bool{}
	for len(seen) < len(want) {
		d := recv(t, got, 2*waitFor)
		require.NotEqual(t, "held", d, "the app handled it before, and only its ack was lost")
		require.True(t, want[d], "delivered %q, which was never stored", d)
		seen[d] = true
	}
	settledConsumer(t, e.hubJS, "orders", "app-orders")
	nothing(t, got, 100*time.Millisecond)
	e.leafHasNothing(t)
}

// crossAccount runs a nats-server where account JS has JetStream and account
// APP, the app's, imports its API under the prefix JS.hub.API, the acks,
// and the topics app.> and the schedule subjects, where it publishes.
func crossAccount(t *testing.T) (*server.Server, natsjs.JetStream) {
	t.Helper()
	dir := t.TempDir()
	ns := runConf(t, dir, "accounts", fmt.Sprintf(`
listen: "127.0.0.1:-1"
jetstream: {store_dir: %q}
accounts: {
  JS: {
    jetstream: enabled
    users: [{user: a, password: a}]
    exports: [
      {service: "$JS.API.>", response_type: stream}
      {service: "$JS.ACK.>"}
      {service: "app.>"}
      {service: "%s.>"}
    ]
  }
  APP: {
    users: [{user: app, password: app}]
    imports: [
      {service: {account: JS, subject: "$JS.API.>"}, to: "JS.hub.API.>"}
      {service: {account: JS, subject: "$JS.ACK.>"}}
      {service: {account: JS, subject: "app.>"}}
      {service: {account: JS, subject: "%s.>"}}
    ]
  }
}
`, filepath.Join(dir, "store"), SchedulePrefix, SchedulePrefix))
	return ns, rawJS(t, ns.ClientURL())
}

// JetStream in another account, through its imported API (apiPrefix): the
// streams are made there, and publishing, delivery, acks, redelivery, dead
// letters and delayed delivery work.
func TestAPIPrefixAcrossAccounts(t *testing.T) {
	t.Parallel()
	ns, js := crossAccount(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "app", "apiPrefix": "JS.hub.API",
		"streamName": "APP", "streamSubjects": "app.>", "consumerID": "app", "ackWait": "1s", "maxDeliver": "2", "deadLetterSubject": "app.dead.{topic}"})
	require.NoError(t, ps.Ping(ctx(t)))
	h, got := failing(1)
	subscribe(t, ps, "app.orders", nil, h)

	publish(t, ps, "app.orders", "one", nil)
	assert.Equal(t, "one", recv(t, got, waitFor).data)
	assert.Equal(t, "one", recv(t, got, waitFor).data, "a failed message is not delivered again")
	durable := consumerInfos(t, js, "APP")
	require.Len(t, durable, 1)
	for _, c := range durable {
		settledConsumer(t, js, "APP", c.Name)
	}
	nothing(t, got, 1500*time.Millisecond) // acked: not again after ackWait

	deadLettered(t, ps, "app.poison", "app.dead.app.poison")

	delayed(t, ps, "app.orders", got)

	resp, err := ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{PubsubName: "test", Topic: "app.orders", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "1", Event: []byte("b1"), ContentType: "text/plain"},
	}})
	require.NoError(t, err)
	assert.Empty(t, resp.FailedEntries)
	assert.Equal(t, []string{"APP"}, streamNames(t, js))
}

// An API prefix that the account does not import: the first publish fails
// at once, naming apiPrefix and its value.
func TestWrongAPIPrefixIsNamed(t *testing.T) {
	t.Parallel()
	ns, _ := crossAccount(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"user": "app", "password": "app", "apiPrefix": "JS.nosuch.API"})
	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "app.orders", Data: []byte("x")})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), `apiPrefix "JS.nosuch.API"`)
	err = ps.Ping(ctx(t))
	require.Error(t, err, "Ping passes while no JetStream answers at the prefix")
	assert.Contains(t, err.Error(), `apiPrefix "JS.nosuch.API"`)
}

// JetStream's MAX_DELIVERIES advisory, published on the hub, crosses the
// leaf node: a message JetStream gives up on (an operator lowered
// max_deliver below the deliveries it had) is logged.
func TestAbandonedThroughLeafNode(t *testing.T) {
	t.Parallel()
	e := startEdge(t, true)
	ps, log := e.openOnLeaf(t, map[string]string{"consumerID": "app", "maxDeliver": "10", "nakDelay": "1s"})
	fails, got := failing(100)
	subscribe(t, ps, "orders", nil, fails)
	publish(t, ps, "orders", "poison", nil)
	recv(t, got, waitFor)
	recv(t, got, waitFor)
	editConsumer(t, e.hubJS, "orders", "app-orders", func(c *natsjs.ConsumerConfig) { c.MaxDeliver = 2 })
	nothing(t, got, 2*time.Second) // JetStream gave up on it instead of the third delivery
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "message at sequence 1 of stream") },
		waitFor, tick, "the message JetStream gave up on is not logged")
}

// The hub comes back without its streams (memory storage) while the app
// stays connected to the leaf, so no reconnect tells the component: the
// stream and the durable are made again, and the ack of a message of the old
// stream, held meanwhile, does not settle the new stream's message with the
// same sequence.
func TestHubLosesItsStoreThroughLeafNode(t *testing.T) {
	t.Parallel()
	e := startEdge(t, true)
	ps, _ := e.openOnLeaf(t, map[string]string{"consumerID": "app", "streamStorage": "memory"})
	release := make(chan struct{})
	h, got := failing(1)
	subscribe(t, ps, "orders", nil, func(c context.Context, m *pubsub.NewMessage) error {
		if string(m.Data) == "held" {
			<-release
		}
		return h(c, m)
	})
	publish(t, ps, "orders", "held", nil)
	require.Eventually(t, func() bool {
		i, err := consumerInfo(e.hubJS, "orders", "app-orders")
		return err == nil && i != nil && i.NumAckPending == 1
	}, waitFor, tick, "held is not delivered")

	e.stopHub(t)
	e.startHub(t)
	e.waitLinked(t)
	require.Eventually(t, func() bool {
		return ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "orders", Data: []byte("new")}) == nil
	}, waitFor, tick, "publishing does not work again once the hub is back")
	require.Eventually(t, func() bool { // new, at sequence 1 too, waits behind held
		i, err := consumerInfo(e.hubJS, "orders", "app-orders")
		return err == nil && i != nil && i.NumAckPending == 1 && i.NumPending == 0
	}, waitFor, tick, "new is not delivered")
	close(release)
	var news int
	for news < 2 { // it fails once, and comes again unless held's ack settled it
		if d := recv(t, got, waitFor); d.data == "new" {
			news++
		}
	}
	settledConsumer(t, e.hubJS, "orders", "app-orders")
}

// deadLettered checks that a message to topic that the app fails at each of
// its 2 deliveries (maxDeliver) reaches dead, the dead-letter topic.
func deadLettered(t *testing.T, ps *PubSub, topic, dead string) {
	t.Helper()
	poison, poisoned := failing(100)
	subscribe(t, ps, topic, nil, poison)
	letters, dl := collect()
	subscribe(t, ps, dead, nil, letters)
	publish(t, ps, topic, "bad", nil)
	recv(t, poisoned, waitFor)
	recv(t, poisoned, waitFor)
	assert.Equal(t, "bad", string(recv(t, dl, waitFor).Data), "no dead letter after maxDeliver")
}

// delayed checks that a message to topic published with deliverAfter: 1s
// reaches got, the topic's deliveries, and not before its time.
func delayed(t *testing.T, ps *PubSub, topic string, got chan delivered) {
	t.Helper()
	sent := time.Now()
	publish(t, ps, topic, "later", map[string]string{"deliverAfter": "1s"})
	later := recv(t, got, waitFor)
	assert.Equal(t, "later", later.data)
	assert.GreaterOrEqual(t, later.at.Sub(sent), 900*time.Millisecond, "a delayed message came early")
}
