// Package jetstream bridges Dapr pub/sub to NATS JetStream. PubSub implements
// components-contrib's pubsub.PubSub, BulkPublisher, BulkSubscriber and
// PausableSubscriber, and can be used in-process as well as behind the
// pluggable gRPC server of this module.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

const (
	// drainTimeout bounds how long Close waits for nats.go to flush and drain.
	drainTimeout = 10 * time.Second
	// minDrain is the least time the NATS connection is given to drain
	// at Close, after the publishes under way were answered.
	minDrain = 500 * time.Millisecond
	// pingTimeout bounds Ping when its context has no deadline.
	pingTimeout = 5 * time.Second
)

// PubSub is a Dapr pub/sub backed by NATS JetStream.
type PubSub struct {
	log logger.Logger

	mu  sync.Mutex
	cfg *metadata.Config
	nc  *nats.Conn
	js  natsjs.JetStream
	// pubAcks takes the answers to js's asynchronous publishes.
	pubAcks *pubAcks
	streams *streams
	// apiPrefix is where JetStream API requests go ("$JS.API." by default).
	apiPrefix string
	// connKey names the NATS account, for handing messages over between
	// instances (see handoverDesk).
	connKey string
	// desk keeps what this instance's ended subscriptions held (see
	// handoverDesk): the process's one, shared with every other instance.
	desk *handoverDesk
	subs map[*subscription]struct{}
	// conns follows the connection, for calls made while it is down.
	conns *connWatch
	// back closes at the next reconnect (see comeBack).
	back    chan struct{}
	paused  bool
	closed  bool
	closing chan struct{} // closed when Close starts
	// shut is closed when Close has finished: a Close made meanwhile
	// waits for it, since its caller may exit the process once it returns.
	shut chan struct{}
	wg   sync.WaitGroup
	// publishing counts the Publish and BulkPublish calls under way, which
	// Close lets finish before it drains the connection: draining drops
	// the acknowledgements they wait for.
	publishing pending
	// noAdvisories logs, once, that NATS refuses the subscriptions to
	// JetStream's notices of abandoned messages.
	noAdvisories sync.Once
	// importedAdvisories logs, once, that with an imported JetStream API
	// those notices come only if the account imports them too.
	importedAdvisories sync.Once
	// answers keeps acks, naks and keep-alives from reaching a stream made
	// again while NATS was away (see answerGate).
	answers *answerGate
	// denials are the subjects NATS refused this connection to publish to.
	denials denials
	// replies follows nats.go's own subscription for JetStream's answers,
	// which NATS removes when the user's permissions lose it.
	replies replyInbox
	// api follows whether any server takes JetStream API requests.
	api *jetStreamAPI
	// stats counts what the instance does; observer, if set, is told each
	// publish's PubAck latency.
	stats    *stats
	observer atomic.Pointer[PublishObserver]
	// streamReads shares the idle subscriptions' reads of their streams.
	streamReads streamReads
}

var (
	_ pubsub.PubSub             = (*PubSub)(nil)
	_ pubsub.BulkPublisher      = (*PubSub)(nil)
	_ pubsub.BulkSubscriber     = (*PubSub)(nil)
	_ pubsub.PausableSubscriber = (*PubSub)(nil)
)

// New returns an uninitialised PubSub that logs to l.
func New(l logger.Logger) *PubSub {
	if l == nil {
		l = logger.NewLogger("nats-jetstream")
	}
	return &PubSub{log: l, desk: desk, subs: map[*subscription]struct{}{}, closing: make(chan struct{}), shut: make(chan struct{}), stats: newStats(), answers: newAnswerGate()}
}

// NewPubSub is New with the signature of components-contrib's constructors.
func NewPubSub(l logger.Logger) pubsub.PubSub { return New(l) }

// Init parses the metadata and connects. It does not wait for NATS: the
// connection is retried forever in the background, so Init succeeds while
// NATS is still starting. Bad metadata, unreadable files and rejected
// credentials are errors.
func (p *PubSub) Init(ctx context.Context, md pubsub.Metadata) error {
	cfg, err := metadata.Parse(md.Properties)
	if err != nil {
		return err
	}
	if unknown := metadata.UnknownKeys(md.Properties); len(unknown) > 0 {
		p.log.Warn(metadata.UnknownKeysWarning(unknown))
	}
	opts, err := connectOptions(cfg.Connection, p.log)
	if err != nil {
		return err
	}
	if cfg.Consumer.FlowControl {
		p.log.Info("flowControl has no effect: pull consumers are flow-controlled by the number of messages they request")
	}
	conns := newConnWatch(p.log, cfg.Connection)
	firstErr := make(chan error, 1)
	opts = append(opts, p.connEvents(conns, firstErr)...)

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.nc != nil {
		return errors.New("jetstream pubsub: Init called twice: this instance is initialised already and keeps its metadata; to change its metadata, Close it and Init a new instance (New)")
	}
	nc, err := p.connect(ctx, cfg.Connection, conns, opts, firstErr)
	if err != nil {
		return err
	}
	conns.watch(nc, p.closing, &p.wg)
	p.conns = conns
	acks := newPubAcks()
	js, err := newJetStream(nc, cfg.Connection, acks.options()...)
	if err != nil {
		nc.Close()
		return err
	}
	p.cfg, p.nc, p.js, p.pubAcks = cfg, nc, js, acks
	p.api = newJetStreamAPI(noJetStream(cfg.Connection))
	p.streams = newStreams(js, cfg.Stream, p.api, p.log)
	p.apiPrefix = apiPrefix(cfg.Connection)
	p.connKey = connKey(cfg.Connection)
	p.wg.Add(1)
	go p.answers.run(p)
	p.desk.register(p)
	return nil
}

// apiPrefix is the subject prefix of JetStream API requests, as nats.go
// builds it for a domain or a custom prefix.
func apiPrefix(c metadata.Connection) string {
	switch {
	case c.Domain != "":
		return "$JS." + c.Domain + ".API."
	case c.APIPrefix != "":
		return strings.TrimSuffix(c.APIPrefix, ".") + "."
	}
	return natsjs.DefaultAPIPrefix
}

// noJetStream says, for a JetStream API request that no server answered,
// where the settings send such requests, and how to fix them. Init cannot
// tell a wrong domain from a hub that is away (neither answers), so it is
// said on each failed call instead of failing Init.
func noJetStream(c metadata.Connection) string {
	switch {
	case c.Domain != "":
		return fmt.Sprintf("no JetStream server answered in domain %q (metadata domain): set domain to the jetstream.domain of the servers that hold the streams, and check that the server this connects to reaches them (the hub of a leaf node may be away)", c.Domain)
	case c.APIPrefix != "":
		return fmt.Sprintf("no JetStream server answered at apiPrefix %q: set apiPrefix to the subject prefix under which this account imports the JetStream API ($JS.API.>) of the account that has JetStream, and check that account's export", c.APIPrefix)
	}
	return "no JetStream server answered: enable JetStream on the NATS servers for this account, or set domain or apiPrefix when JetStream is reached through a leaf node or another account"
}

// seesConsumer reports whether p's JetStream has consumer name on stream,
// created at created: the very consumer, not one of the same name elsewhere.
func (p *PubSub) seesConsumer(stream, name string, created time.Time) bool {
	_, js, _, err := p.state()
	if err != nil || created.IsZero() {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	c, err := js.Consumer(ctx, stream, name)
	return err == nil && c.CachedInfo().Created.Equal(created)
}

// reconnected tells every subscription that NATS came back: the pull
// requests they had open may be lost, and retrying starts over at once.
func (p *PubSub) reconnected() {
	p.mu.Lock()
	subs := p.subscriptionsLocked()
	if p.back != nil {
		close(p.back)
		p.back = nil
	}
	p.mu.Unlock()
	for _, s := range subs {
		s.reconnected()
	}
}

// comeBack returns a channel that closes when NATS next reconnects: what
// waits to try again can then try at once.
func (p *PubSub) comeBack() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.back == nil {
		p.back = make(chan struct{})
	}
	return p.back
}

// connected reports whether NATS is connected now.
func (p *PubSub) connected() bool {
	nc := p.conn()
	return nc != nil && nc.IsConnected()
}

// conn returns the NATS connection, or nil before Init.
func (p *PubSub) conn() *nats.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nc
}

// reply turns down a message on arrival, publishing body to its reply
// subject. Not while NATS is away: nats.go would keep it and send it on
// reconnect, before the message's stream is read back, when the same reply
// subject may name another message of a stream made again. A turn-down not
// sent costs nothing: the message comes again after its ack wait.
func (p *PubSub) reply(subject string, body []byte) error {
	nc := p.conn()
	if nc == nil {
		return ErrClosed
	}
	if !nc.IsConnected() {
		return nats.ErrConnectionReconnecting
	}
	return nc.Publish(subject, body)
}

// request publishes a JetStream request whose answers go to inbox. It fails
// while NATS is away, rather than leaving the request in nats.go's reconnect
// buffer: pull requests found lost meanwhile are made again, and would all
// reach the server at once on reconnect, each for a whole window, and more
// than maxInFlight would be delivered.
func (p *PubSub) request(subject, inbox string, body []byte) error {
	nc := p.conn()
	if nc == nil {
		return ErrClosed
	}
	if !nc.IsConnected() {
		return fmt.Errorf("%w (%s)", ErrNotConnected, nc.Status())
	}
	return nc.PublishRequest(subject, inbox, body)
}

// Features advertises what truly works: per-message TTL (nats-server 2.11+),
// wildcard subscriptions and bulk publish.
func (p *PubSub) Features() []pubsub.Feature {
	return []pubsub.Feature{pubsub.FeatureMessageTTL, pubsub.FeatureSubscribeWildcards, pubsub.FeatureBulkPublish}
}

// Ping fails while NATS is not connected.
func (p *PubSub) Ping(ctx context.Context) error {
	p.mu.Lock()
	nc, closed := p.nc, p.closed
	p.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case nc == nil:
		return ErrNotInitialized
	case !nc.IsConnected():
		if err := p.notConnected(); err != nil {
			return err
		}
		return fmt.Errorf("NATS is not connected (%s)", nc.Status())
	}
	if _, ok := ctx.Deadline(); !ok {
		// nats.go refuses to flush without a deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pingTimeout)
		defer cancel()
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		// The connection dropped during the ping: say why, as above.
		if down := p.notConnected(); down != nil {
			return down
		}
		return fmt.Errorf("NATS did not answer a ping: %w", err)
	}
	p.mu.Lock()
	api := p.api
	p.mu.Unlock()
	return errors.Join(p.replies.problem(), api.problem(), p.failingSubscriptions())
}

// failingSubscriptions names the subscriptions that cannot deliver, for
// probes: an error that retrying cannot fix, or one that lasted stuckAfter.
func (p *PubSub) failingSubscriptions() error {
	p.mu.Lock()
	subs := p.subscriptionsLocked()
	p.mu.Unlock()
	now := time.Now()
	var problems []string
	for _, s := range subs {
		if why := s.failing(now); why != "" {
			problems = append(problems, why)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	return fmt.Errorf("%d subscriptions cannot deliver: %s", len(problems), strings.Join(problems, "; "))
}

// Pause stops delivery for every subscription; consumers and in-flight
// messages are kept, so acknowledgements still land. Each subscription
// withdraws its pull: what JetStream already sent is received and held (kept
// alive) for Resume, not given back, since JetStream would count that as a
// delivery. Pause returns once the open pull requests have ended (they last
// pullExpiry) and the pulls are withdrawn, or after withdrawGrace when a
// handler does not return, so messages published from then on wait in
// JetStream for Resume or another subscriber. Idempotent. It fails before
// Init and after Close.
func (p *PubSub) Pause(ctx context.Context) error {
	p.mu.Lock()
	if err := p.liveLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	p.paused = true
	subs := p.subscriptionsLocked()
	p.mu.Unlock()
	quiet := make([]<-chan struct{}, 0, len(subs))
	for _, s := range subs {
		quiet = append(quiet, s.pause())
	}
	start := time.Now()
	for i, ch := range quiet {
		if ctx.Err() != nil {
			break
		}
		waitUpTo(ch, max(0, min(withdrawGrace-time.Since(start), subs[i].withdrawWait())))
	}
	for _, s := range subs {
		s.closeInbox()
		s.keepPinWhilePaused()
	}
	return nil
}

// Resume restarts fetching after Pause. Idempotent. It fails before Init
// and after Close, when no subscription could deliver.
func (p *PubSub) Resume(context.Context) error {
	p.mu.Lock()
	if err := p.liveLocked(); err != nil {
		p.mu.Unlock()
		return err
	}
	p.paused = false
	subs := p.subscriptionsLocked()
	p.mu.Unlock()
	for _, s := range subs {
		s.resume()
	}
	return nil
}

// liveLocked says why p cannot act on subscriptions: not initialised yet,
// or closed. p.mu is held.
func (p *PubSub) liveLocked() error {
	_, _, _, err := p.stateLocked()
	return err
}

// subscriptionsLocked lists the subscriptions. p.mu is held; callers work on
// the list after releasing it, since a subscription takes its own lock
// before p.mu (see conn).
func (p *PubSub) subscriptionsLocked() []*subscription {
	subs := make([]*subscription, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	return subs
}

// Close stops every subscription (messages not yet acknowledged go back to
// JetStream), drains the connection and returns when everything has stopped.
// The error says why the connection could not be drained; it is closed
// anyway. A second Close returns nil once the first has finished.
func (p *PubSub) Close() error { return p.CloseWithin(drainTimeout) }

// CloseWithin is Close, with the wait for publishes under way and the drain
// of the NATS connection bounded by d together, so that a process shutting
// down meets its own bound whatever NATS does.
func (p *PubSub) CloseWithin(d time.Duration) error {
	nc, ok := p.beginClose()
	if !ok {
		<-p.shut
		return nil
	}
	defer close(p.shut)
	p.wg.Wait()
	return p.endClose(nc, time.Now().Add(d))
}

// Retire closes p as Close does, for an instance whose daprd has gone. What
// its ended subscriptions left for the next subscription of their consumers
// keeps waiting, kept alive by p, until another instance on the same NATS
// account can keep it (the daprd came back and initialised its Component
// again), nothing waits any more, handoverTimeout has passed, or stop
// closes. Close would give it back to JetStream at once when p is the last
// instance on its account, as at shutdown, using up a delivery of messages
// the app never saw.
func (p *PubSub) Retire(stop <-chan struct{}) error {
	nc, ok := p.beginClose()
	if !ok {
		<-p.shut
		return nil
	}
	defer close(p.shut)
	p.wg.Wait()
	deadline := time.NewTimer(handoverTimeout + handoverTick)
	defer deadline.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for p.desk.waitsOnlyOn(p) {
		select {
		case <-stop:
			return p.endClose(nc, time.Now().Add(drainTimeout))
		case <-deadline.C:
			return p.endClose(nc, time.Now().Add(drainTimeout))
		case <-poll.C:
		}
	}
	return p.endClose(nc, time.Now().Add(drainTimeout))
}

// beginClose marks p closed and stops its subscriptions; false when p was
// closed already.
func (p *PubSub) beginClose() (*nats.Conn, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, false
	}
	p.closed = true
	close(p.closing)
	p.replies.close()
	if p.api != nil {
		p.api.close()
	}
	for s := range p.subs {
		s.stop()
	}
	return p.nc, true
}

// endClose leaves the handover desk and drains the connection, once the
// subscriptions have ended, by deadline.
func (p *PubSub) endClose(nc *nats.Conn, deadline time.Time) error {
	if nc == nil {
		return nil
	}
	started := time.Now()
	answered := waitUpTo(p.publishing.idle(), time.Until(deadline))
	if !answered {
		p.log.Warnf("publishes still waiting for their acknowledgement after %s; closing anyway, and they fail, although JetStream may have stored their messages", time.Since(started).Round(time.Millisecond))
	}
	p.desk.unregister(p)
	if n := p.answers.drop(); n > 0 {
		p.log.Warnf("%d answers to JetStream (acks, naks, keep-alives) waited for NATS to come back, or for their stream to be read back after it did, and are not sent as the instance closes; JetStream delivers their messages again once their ackWait ends", n)
	}
	if !nc.IsConnected() || !answered {
		// Nothing buffered can reach a server that is not there, or that
		// answers nothing: draining would wait for it in vain.
		nc.Close()
		return nil
	}
	return drain(nc, max(time.Until(deadline), minDrain))
}

// drain has nc deliver what its subscriptions hold and flush what it
// buffers, then closes it; after timeout, it closes nc as it is. Either way
// nc ends closed, and an error says that what nc held may be lost.
func drain(nc *nats.Conn, timeout time.Duration) error {
	done := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return fmt.Errorf("jetstream pubsub: close: drain the NATS connection: %w; closed it without draining", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		nc.Close()
		return fmt.Errorf("jetstream pubsub: close: draining the NATS connection did not finish within %s; closed it without finishing", timeout)
	}
}

// Closing is closed when Close starts. A DeliverFunc blocked on a slow
// reader should give up then, so that the subscription can hand its messages
// over without waiting for that reader.
func (p *PubSub) Closing() <-chan struct{} { return p.closing }

// GetComponentMetadata describes the metadata fields for Dapr's tooling.
func (p *PubSub) GetComponentMetadata() (md contribmd.MetadataMap) {
	_ = contribmd.GetMetadataInfoFromStructType(reflect.TypeFor[metadata.Properties](), &md, contribmd.PubSubType)
	return md
}

// state returns what calls need, or why they cannot proceed.
// stateWhileClosing is state, also while p is closing: its connection stays
// open until every subscription has finished, and what they finish (a dead
// letter, say) may need it.
func (p *PubSub) stateWhileClosing() (natsjs.JetStream, *streams, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.js == nil {
		return nil, nil, ErrNotInitialized
	}
	return p.js, p.streams, nil
}

// publisher is what a publish needs of its instance.
type publisher struct {
	cfg     *metadata.Config
	js      natsjs.JetStream
	acks    *pubAcks
	streams *streams
	// calls counts the publish as under way until calls.done is called.
	calls *pending
}

// publishState is state for a publish, which counts as under way until
// calls.done is called.
func (p *PubSub) publishState() (publisher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg, js, s, err := p.stateLocked()
	if err != nil {
		return publisher{}, err
	}
	p.publishing.add()
	return publisher{cfg: cfg, js: js, acks: p.pubAcks, streams: s, calls: &p.publishing}, nil
}

func (p *PubSub) state() (*metadata.Config, natsjs.JetStream, *streams, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stateLocked()
}

func (p *PubSub) stateLocked() (*metadata.Config, natsjs.JetStream, *streams, error) {
	switch {
	case p.closed:
		return nil, nil, nil, ErrClosed
	case p.js == nil:
		return nil, nil, nil, ErrNotInitialized
	}
	return p.cfg, p.js, p.streams, nil
}
