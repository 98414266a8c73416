// Package pluggable serves the jetstream pub/sub to daprd over Dapr's
// pluggable component protocol (dapr.proto.components.v1.PubSub) on a Unix
// socket. It is written directly on the generated proto rather than on
// components-go-sdk, whose v0.3.0 makes the socket world-writable, can panic
// on a late acknowledgement, never calls Close and stops hard.
package pluggable

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/dapr/kit/logger"
	"google.golang.org/grpc/codes"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/metrics"
)

// InstanceHeader is the gRPC metadata key daprd uses to name the Component
// a call is for; one process serves every Component that points at it.
const InstanceHeader = "x-component-instance"

// Server implements proto.PubSubServer with one jetstream.PubSub per
// Component instance of each daprd: several daprds (apps started with
// `dapr run` against one component process) may use the same Component name,
// each with its own metadata.
type Server struct {
	proto.UnimplementedPubSubServer
	log logger.Logger

	mu        sync.Mutex
	instances map[instanceKey]*jetstream.PubSub
	pulls     map[*pull]struct{}
	draining  bool
	nextID    atomic.Uint64
	// conns counts the open connections of each daprd process, and watching
	// the processes whose last connection closed (see watchExit).
	conns    map[int]int
	watching map[int]bool
	stop     chan struct{} // closed by Shutdown
	watchers sync.WaitGroup
	// metrics, if set, records each instance's publishes.
	metrics *metrics.Metrics
	// uninitialized holds the Components daprds called without an Init in
	// this process (see notInitialized), until they are initialised or the
	// daprd exits.
	uninitialized map[instanceKey]bool
	// bindings holds, for each instance, the connection daprd initialised it
	// on and its Init metadata; open, the connections open now; parked, the
	// instances closed because their connection closed (see connClosed).
	bindings map[instanceKey]binding
	open     map[uint64]bool
	parked   map[instanceKey]*parkedInstance
}

// binding is where an instance came from: the connection (peerAddr.conn, 0
// when unknown) its Init came on, and the Init's metadata.
type binding struct {
	conn  uint64
	props map[string]string
}

// instanceKey names an instance: the Component name daprd gave it, and the
// daprd it belongs to (its process id, see peerAddr).
type instanceKey struct {
	name string
	pid  int
}

func (k instanceKey) String() string {
	if k.pid == 0 {
		return strconv.Quote(k.name)
	}
	return strconv.Quote(k.name) + " of daprd process " + strconv.Itoa(k.pid)
}

// NewServer returns a Server with no instances.
func NewServer(l logger.Logger) *Server {
	return &Server{
		log: l, instances: map[instanceKey]*jetstream.PubSub{}, pulls: map[*pull]struct{}{},
		conns: map[int]int{}, watching: map[int]bool{}, stop: make(chan struct{}), uninitialized: map[instanceKey]bool{},
		bindings: map[instanceKey]binding{}, open: map[uint64]bool{}, parked: map[instanceKey]*parkedInstance{},
	}
}

func instanceName(ctx context.Context) string {
	// Only the one key: FromIncomingContext would copy every header of
	// every call.
	if v := grpcmd.ValueFromIncomingContext(ctx, InstanceHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// callerPID is the process id of the daprd that made the call, or 0.
func callerPID(ctx context.Context) int {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(peerAddr); ok {
			return a.pid
		}
	}
	return 0
}

// callerConn is the number of the connection the call came on, or 0.
func callerConn(ctx context.Context) uint64 {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.Addr.(peerAddr); ok {
			return a.conn
		}
	}
	return 0
}

func callerKey(ctx context.Context) instanceKey {
	return instanceKey{name: instanceName(ctx), pid: callerPID(ctx)}
}

func (s *Server) instance(ctx context.Context) (*jetstream.PubSub, instanceKey, error) {
	key := callerKey(ctx)
	s.mu.Lock()
	ps, ok := s.instances[key]
	pk := s.parked[key]
	if !ok && pk == nil && key.name != "" {
		s.uninitialized[key] = true
	}
	s.mu.Unlock()
	switch {
	case ok:
		return ps, key, nil
	case pk != nil:
		ps, err := s.revive(ctx, key, pk)
		return ps, key, err
	}
	return nil, key, status.Errorf(codes.FailedPrecondition, "component %s is not initialized: %s", key, notInitialized)
}

// revive initialises a parked instance again, with the metadata of its last
// Init, for a call that names it: daprd's connection had gone idle, and the
// call came on the connection daprd dialled again, without an Init. Calls
// that arrive meanwhile wait for the same Init.
func (s *Server) revive(ctx context.Context, key instanceKey, pk *parkedInstance) (*jetstream.PubSub, error) {
	pk.once.Do(func() {
		s.log.Infof("component %s: called again after daprd closed its connection; initializing it again with the metadata of its last Init", key)
		// Not bound to the first caller's deadline: the others wait for it too.
		pk.ps, pk.err = s.initInstance(context.WithoutCancel(ctx), key, callerConn(ctx), pk.props, pk)
	})
	return pk.ps, pk.err
}

// notInitialized says why a daprd calls a Component that this process has
// not initialised, and what to do. daprd initialises its Components, and
// opens its subscriptions, only when it starts: when the component process
// restarts under a running daprd (its container was OOM-killed, say), every
// call of that daprd fails until daprd restarts too.
const notInitialized = "daprd initialises a Component only when it starts, so this component process started (or restarted) after daprd did; restart daprd (in Kubernetes, the pod) so that it initialises the Component and subscribes again, or call Init first"

// Init creates (or re-creates) the instance named by the call's metadata.
func (s *Server) Init(ctx context.Context, req *proto.PubSubInitRequest) (*proto.PubSubInitResponse, error) {
	if _, err := s.initInstance(ctx, callerKey(ctx), callerConn(ctx), req.GetMetadata().GetProperties(), nil); err != nil {
		return nil, err
	}
	return &proto.PubSubInitResponse{}, nil
}

// initInstance creates the instance key with props, for an Init that came on
// connection conn, or to revive pk.
func (s *Server) initInstance(ctx context.Context, key instanceKey, conn uint64, props map[string]string, pk *parkedInstance) (*jetstream.PubSub, error) {
	name := key.name
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining {
		return nil, status.Error(codes.Unavailable, "the component is shutting down")
	}
	ps := jetstream.New(s.log.WithFields(map[string]any{"component": name, "daprd": key.pid}))
	if s.metrics != nil {
		ps.SetPublishObserver(s.metrics.Publishes(name, strconv.Itoa(key.pid)))
	}
	err := ps.Init(ctx, pubsub.Metadata{Base: contribmd.Base{Name: name, Properties: props}})
	if err != nil {
		_ = ps.Close()
		s.log.Errorf("init component %s: %v", key, err)
		if pk != nil {
			// A later call tries again.
			s.mu.Lock()
			if s.parked[key] == pk {
				s.parked[key] = &parkedInstance{props: pk.props, prev: pk.prev}
			}
			s.mu.Unlock()
		}
		return nil, status.Errorf(codes.InvalidArgument, "init component %q: %v", name, err)
	}
	s.mu.Lock()
	if s.draining {
		// Shutdown began while this instance connected: it has already
		// collected the instances it closes, so this one must not stay.
		s.mu.Unlock()
		_ = ps.Close()
		return nil, status.Error(codes.Unavailable, "the component is shutting down")
	}
	if pk != nil && s.parked[key] != pk {
		// daprd initialised the Component itself meanwhile: its instance
		// stays, with its own metadata.
		now, ok := s.instances[key]
		s.mu.Unlock()
		_ = ps.Close()
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "component %s is not initialized: %s", key, notInitialized)
		}
		return now, nil
	}
	old := s.instances[key]
	s.instances[key] = ps
	s.bindings[key] = binding{conn: conn, props: props}
	delete(s.uninitialized, key)
	// The series keep their labels, so the counters go on from the old
	// instance's rather than back to 0.
	if parked := s.parked[key]; old == nil && parked != nil {
		ps.ContinueCounts(parked.prev)
	} else {
		ps.ContinueCounts(old)
	}
	delete(s.parked, key)
	if conn != 0 && !s.open[conn] {
		// daprd closed the connection while this Init ran: it closed the
		// Component, or exited, meanwhile.
		s.parkLocked(key)
	}
	// A slow Init can outlive the daprd that asked for it: its last
	// connection may have closed meanwhile, with nothing left to notice
	// that it exited and close this instance.
	s.watchIfDisconnectedLocked(key.pid)
	s.mu.Unlock()
	if old != nil {
		s.log.Infof("component %s initialized again; closing its previous instance", key)
		go func() { _ = old.Close() }()
	}
	s.log.Infof("component %s initialized", key)
	return ps, nil
}

// Features lists the instance's features.
func (s *Server) Features(ctx context.Context, _ *proto.FeaturesRequest) (*proto.FeaturesResponse, error) {
	ps, _, err := s.instance(ctx)
	if err != nil {
		return nil, err
	}
	feats := ps.Features()
	out := make([]string, len(feats))
	for i, f := range feats {
		out[i] = string(f)
	}
	return &proto.FeaturesResponse{Features: out}, nil
}

// Publish stores one message and answers once JetStream acknowledged it.
func (s *Server) Publish(ctx context.Context, req *proto.PublishRequest) (*proto.PublishResponse, error) {
	ps, _, err := s.instance(ctx)
	if err != nil {
		return nil, err
	}
	r := &pubsub.PublishRequest{Data: req.GetData(), PubsubName: req.GetPubsubName(), Topic: req.GetTopic(), Metadata: req.GetMetadata()}
	if ct := req.GetContentType(); ct != "" {
		r.ContentType = &ct
	}
	if err := s.publishOn(ctx, ps, r); err != nil {
		return nil, s.callStatus(err)
	}
	return &proto.PublishResponse{}, nil
}

// publishOn publishes r on ps, the caller's instance when the call began,
// or on the one that replaced it meanwhile (see replacing).
func (s *Server) publishOn(ctx context.Context, ps *jetstream.PubSub, r *pubsub.PublishRequest) error {
	err := ps.Publish(ctx, r)
	if now := s.replacing(ctx, ps, err); now != nil {
		err = now.Publish(ctx, r)
	}
	return err
}

// bulkPublishOn publishes r on ps, the caller's instance when the call
// began, or on the one that replaced it meanwhile (see replacing).
func (s *Server) bulkPublishOn(ctx context.Context, ps *jetstream.PubSub, r *pubsub.BulkPublishRequest) (pubsub.BulkPublishResponse, error) {
	resp, err := ps.BulkPublish(ctx, r)
	if now := s.replacing(ctx, ps, err); now != nil {
		resp, err = now.BulkPublish(ctx, r)
	}
	return resp, err
}

// replacing returns the instance that serves the caller now, when ps, which
// the call looked up, failed it with err because an Init of the caller's
// Component (a hot reload) closed ps meanwhile. A closed instance refuses a
// call before sending anything, so the call may be made again on the new
// one; nil for any other outcome, and at shutdown (see callStatus).
func (s *Server) replacing(ctx context.Context, ps *jetstream.PubSub, err error) *jetstream.PubSub {
	if !errors.Is(err, jetstream.ErrClosed) {
		return nil
	}
	key := callerKey(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if now, ok := s.instances[key]; ok && now != ps && !s.draining {
		return now
	}
	return nil
}

// BulkPublish publishes a batch. When entries failed, it answers with an
// error status that names them and carries the BulkPublishResponse as a
// detail: daprd's pluggable client turns a response into "no error", and
// daprd's HTTP API then answers 204 for a batch whose failed entries were
// never stored.
func (s *Server) BulkPublish(ctx context.Context, req *proto.BulkPublishRequest) (*proto.BulkPublishResponse, error) {
	ps, _, err := s.instance(ctx)
	if err != nil {
		return nil, err
	}
	entries := make([]pubsub.BulkMessageEntry, len(req.GetEntries()))
	for i, e := range req.GetEntries() {
		entries[i] = pubsub.BulkMessageEntry{EntryId: e.GetEntryId(), Event: e.GetEvent(), ContentType: e.GetContentType(), Metadata: e.GetMetadata()}
	}
	resp, err := s.bulkPublishOn(ctx, ps, &pubsub.BulkPublishRequest{
		Entries: entries, PubsubName: req.GetPubsubName(), Topic: req.GetTopic(), Metadata: req.GetMetadata(),
	})
	if err != nil && len(resp.FailedEntries) == 0 {
		return nil, s.callStatus(err)
	}
	out := &proto.BulkPublishResponse{FailedEntries: make([]*proto.BulkPublishResponseFailedEntry, len(resp.FailedEntries))}
	for i, f := range resp.FailedEntries {
		msg := "failed"
		if f.Error != nil {
			msg = status.Convert(s.callStatus(f.Error)).Message()
		}
		out.FailedEntries[i] = &proto.BulkPublishResponseFailedEntry{EntryId: f.EntryId, Error: msg}
	}
	if len(out.FailedEntries) > 0 {
		st := status.Convert(s.callStatus(err))
		if d, derr := st.WithDetails(out); derr == nil {
			st = d
		}
		return nil, st.Err()
	}
	return out, nil
}

// Pause stops delivery for the instance; consumers and in-flight messages stay.
func (s *Server) Pause(ctx context.Context, _ *proto.PauseRequest) (*proto.PauseResponse, error) {
	ps, _, err := s.instance(ctx)
	if err != nil {
		return nil, err
	}
	if err := ps.Pause(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &proto.PauseResponse{}, nil
}

// Resume restarts delivery after Pause.
func (s *Server) Resume(ctx context.Context, _ *proto.ResumeRequest) (*proto.ResumeResponse, error) {
	ps, _, err := s.instance(ctx)
	if err != nil {
		return nil, err
	}
	if err := ps.Resume(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &proto.ResumeResponse{}, nil
}

// Ping fails while the named instance (or, without a name, any instance) is
// not connected to NATS. A name is looked up among the caller's instances
// first, then among every daprd's.
func (s *Server) Ping(ctx context.Context, _ *proto.PingRequest) (*proto.PingResponse, error) {
	key := callerKey(ctx)
	s.mu.Lock()
	targets := map[instanceKey]*jetstream.PubSub{}
	if ps, ok := s.instances[key]; ok && key.name != "" {
		targets[key] = ps
	} else {
		for k, ps := range s.instances {
			if key.name == "" || k.name == key.name {
				targets[k] = ps
			}
		}
	}
	s.mu.Unlock()
	if key.name != "" && len(targets) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "component %q is not initialized", key.name)
	}
	for k, ps := range targets {
		if err := ps.Ping(ctx); err != nil {
			return nil, status.Errorf(codes.Unavailable, "component %s: %v", k, err)
		}
	}
	return &proto.PingResponse{}, nil
}

// pull is one PullMessages stream: the messages sent to daprd and not yet
// acknowledged, by the id they were sent with.
type pull struct {
	mu      sync.Mutex
	pending map[string]*jetstream.Delivery
	log     logger.Logger // with the component, daprd and topic as fields
}

func (p *pull) add(id string, d *jetstream.Delivery) {
	p.mu.Lock()
	p.pending[id] = d
	p.mu.Unlock()
}

func (p *pull) take(id string) *jetstream.Delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.pending[id]
	delete(p.pending, id)
	return d
}

func (p *pull) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// PullMessages streams one topic's messages to daprd and settles them by the
// acknowledgements daprd sends back. NATS trouble never ends the stream; the
// subscription recovers inside. When the stream ends, every message not yet
// acknowledged goes back to JetStream.
func (s *Server) PullMessages(stream proto.PubSub_PullMessagesServer) error {
	ps, key, err := s.instance(stream.Context())
	if err != nil {
		return err
	}
	topic, err := firstTopic(stream)
	if err != nil {
		return err
	}
	p := &pull{pending: map[string]*jetstream.Delivery{}, log: s.log.WithFields(map[string]any{"component": key.name, "daprd": key.pid, "topic": topic.GetName()})}
	if err := s.register(p); err != nil {
		return err
	}
	defer s.unregister(p)

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	done, err := ps.SubscribeDeliveries(ctx, pubsub.SubscribeRequest{Topic: topic.GetName(), Metadata: topic.GetMetadata()}, s.sendTo(stream, p, cancel))
	if err != nil {
		return toStatus(err)
	}
	p.log.Infof("component %s: daprd subscribed to topic %q", key, topic.GetName())

	received := s.settleAcks(stream, p, topic.GetName())
	select {
	case <-received:
		cancel()
		<-done
	case <-ps.Closing():
		// The instance is closing (shutdown or re-Init). Returning ends the
		// stream, so that a Send blocked on a daprd that stopped reading
		// gives up and the subscription can hand its messages over.
	case <-done:
	}
	p.log.Infof("component %s: subscription to topic %q ended", key, topic.GetName())
	return nil
}

// firstTopic reads the first request of a PullMessages stream, which names
// the topic.
func firstTopic(stream proto.PubSub_PullMessagesServer) (*proto.Topic, error) {
	first, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	topic := first.GetTopic()
	if topic.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "the first PullMessages request must name the topic")
	}
	return topic, nil
}

// register counts p among the streams whose acknowledgements Shutdown waits
// for; none is taken once Shutdown began.
func (s *Server) register(p *pull) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return status.Error(codes.Unavailable, "the component is shutting down")
	}
	s.pulls[p] = struct{}{}
	return nil
}

func (s *Server) unregister(p *pull) {
	s.mu.Lock()
	delete(s.pulls, p)
	s.mu.Unlock()
}

// sendTo sends each delivery to daprd under a new id, and ends the
// subscription (cancel) when daprd can no longer be sent to.
func (s *Server) sendTo(stream proto.PubSub_PullMessagesServer, p *pull, cancel context.CancelFunc) jetstream.DeliverFunc {
	return func(d *jetstream.Delivery) error {
		id := strconv.FormatUint(s.nextID.Add(1), 36)
		p.add(id, d)
		err := stream.Send(&proto.PullMessagesResponse{
			Data: d.Data, TopicName: d.Topic, Metadata: d.Metadata, ContentType: deref(d.ContentType), Id: id,
		})
		if err != nil {
			p.take(id)
			cancel()
		}
		return err
	}
}

// settleAcks settles the messages daprd acknowledges on stream, until daprd
// ends the stream; then the returned channel is closed.
func (s *Server) settleAcks(stream proto.PubSub_PullMessagesServer, p *pull, topic string) <-chan struct{} {
	received := make(chan struct{})
	go func() {
		defer close(received)
		for {
			req, err := stream.Recv()
			if err != nil {
				return
			}
			s.settle(p, topic, req)
		}
	}()
	return received
}

func (s *Server) settle(p *pull, topic string, req *proto.PullMessagesRequest) {
	if req.GetTopic() != nil {
		p.log.Warnf("topic %q: ignoring a second topic frame on the same stream", topic)
	}
	id := req.GetAckMessageId()
	if id == "" {
		if req.GetTopic() == nil {
			p.log.Warnf("topic %q: ignoring a request with no message id", topic)
		}
		return
	}
	d := p.take(id)
	if d == nil {
		p.log.Warnf("topic %q: ignoring an acknowledgement for unknown, already acknowledged or expired message %q", topic, id)
		return
	}
	var err error
	if ackErr := req.GetAckError(); ackErr != nil {
		err = d.Settle(appError(ackErr.GetMessage()))
	} else {
		err = d.Ack()
	}
	if err != nil && !errors.Is(err, jetstream.ErrAlreadySettled) {
		p.log.Warnf("topic %q: settling message %q: %v (JetStream will redeliver it)", topic, id, err)
	}
}

// closeGrace bounds closing the instances at shutdown, after the drain: the
// wait for publishes under way and the drain of each NATS connection,
// side by side. It leaves room in shutdownGrace for gRPC to stop.
const closeGrace = 3 * time.Second

// shutdownGrace is how long after the drain a shutdown may take: closing
// the instances, then stopping gRPC.
const shutdownGrace = 5 * time.Second

// Shutdown stops taking new subscriptions, pauses every instance, waits
// until drain has passed since it began for daprd to acknowledge what it
// already has, then closes every instance within closeGrace: what is still
// unacknowledged goes back to JetStream.
func (s *Server) Shutdown(drain time.Duration) {
	deadline := time.Now().Add(drain)
	s.mu.Lock()
	if !s.draining {
		close(s.stop)
	}
	s.draining = true
	instances := make([]*jetstream.PubSub, 0, len(s.instances))
	for _, ps := range s.instances {
		instances = append(instances, ps)
	}
	s.mu.Unlock()

	// Side by side: while NATS is away, each instance's pull requests end
	// only by Pause's grace, which must not add up over the daprds.
	var paused sync.WaitGroup
	for _, ps := range instances {
		paused.Add(1)
		go func() {
			defer paused.Done()
			_ = ps.Pause(context.Background())
		}()
	}
	paused.Wait()
	for time.Now().Before(deadline) && s.pendingAcks() > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if n := s.pendingAcks(); n > 0 && anyDisconnected(instances) {
		s.log.Warnf("%d messages still unacknowledged after %s, and NATS is not connected, so they cannot be given back now; JetStream delivers them again once their ackWait ends", n, drain)
	} else if n > 0 {
		s.log.Warnf("%d messages still unacknowledged after %s; giving them back to JetStream", n, drain)
	}
	s.watchers.Wait()
	var wg sync.WaitGroup
	for _, ps := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ps.CloseWithin(closeGrace)
		}()
	}
	wg.Wait()
}

// anyDisconnected reports whether an instance has lost NATS, so that what it
// holds cannot be given back before it closes.
func anyDisconnected(instances []*jetstream.PubSub) bool {
	return slices.ContainsFunc(instances, func(ps *jetstream.PubSub) bool { return ps.Stats().Connection.State != "connected" })
}

func (s *Server) pendingAcks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p := range s.pulls {
		n += p.size()
	}
	return n
}

// closedByShutdown is what daprd gets for a publish that reached an instance
// that Shutdown had closed: the publish and the gRPC server's stop race, and
// daprd's API may serve on for longer (--dapr-block-shutdown-duration).
const closedByShutdown = "the component is shutting down (it got SIGTERM, as when its pod is deleted) and has closed its NATS connection, so this message was not stored; publish it again once the pod that replaces this one serves, or through another replica of the app"

// callStatus is toStatus, except for a call that found its instance closed
// by Shutdown: the status says so, and what to do, rather than the bare
// jetstream.ErrClosed.
func (s *Server) callStatus(err error) error {
	if errors.Is(err, jetstream.ErrClosed) {
		s.mu.Lock()
		draining := s.draining
		s.mu.Unlock()
		if draining {
			return status.Error(codes.Unavailable, closedByShutdown)
		}
	}
	return toStatus(err)
}

// toStatus is the gRPC status daprd gets for err. A *jetstream.Error carries
// its own (see its GRPCStatus); any other error gets the one of its Kind.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(status.Code(&jetstream.Error{Kind: jetstream.KindOf(err), Err: err}), err.Error())
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// appError is the failure daprd reports for a message its app did not take.
func appError(msg string) error {
	if msg == "" {
		msg = "daprd reported that the app did not process the message"
	}
	return errors.New(msg)
}

// UseMetrics has m record the instances this server makes, and list them at
// each scrape.
func (s *Server) UseMetrics(m *metrics.Metrics) {
	s.mu.Lock()
	s.metrics = m
	s.mu.Unlock()
	m.SetSource(s.metricsInstances)
}

// metricsInstances is what each instance does now, for a scrape.
func (s *Server) metricsInstances() []metrics.Instance {
	s.mu.Lock()
	keys := make([]instanceKey, 0, len(s.instances))
	pss := make([]*jetstream.PubSub, 0, len(s.instances))
	for k, ps := range s.instances {
		keys, pss = append(keys, k), append(pss, ps)
	}
	var missing []instanceKey
	for k := range s.uninitialized {
		missing = append(missing, k)
	}
	s.mu.Unlock()
	out := make([]metrics.Instance, len(keys), len(keys)+len(missing))
	for i, k := range keys {
		out[i] = metrics.Instance{Name: k.name, Daprd: strconv.Itoa(k.pid), Stats: pss[i].Stats()}
	}
	for _, k := range missing {
		out = append(out, metrics.Instance{Name: k.name, Daprd: strconv.Itoa(k.pid), NotServing: "not initialized in this component process: " + notInitialized})
	}
	return out
}
