package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/dapr/pkg/components/pluggable"
	daprpubsub "github.com/dapr/dapr/pkg/components/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// sizes of the counts of each pair, full and -quick.
type sizes struct {
	rounds       int
	serial       int // pair 1, per measurement
	concurrent   int // pair 2
	bulk         int // pair 3
	backlog      int // pair 4
	paced        time.Duration
	rssTotal     int // pair 7
	daprdRounds  int
	daprdSerial  int
	daprdConc    int
	daprdBacklog int
	daprdPaced   time.Duration
}

var (
	fullSizes = sizes{
		rounds: 5, serial: 5000, concurrent: 50000, bulk: 100000, backlog: 50000, paced: 6 * time.Second,
		rssTotal: 1000000, daprdRounds: 3, daprdSerial: 2000, daprdConc: 10000, daprdBacklog: 10000, daprdPaced: 5 * time.Second,
	}
	quickSizes = sizes{
		rounds: 2, serial: 1000, concurrent: 10000, bulk: 20000, backlog: 10000, paced: 2 * time.Second,
		rssTotal: 100000, daprdRounds: 1, daprdSerial: 500, daprdConc: 3000, daprdBacklog: 3000, daprdPaced: 2 * time.Second,
	}
)

const (
	smallMsg = 128
	largeMsg = 1024
	// ceType is what daprd sets on the entries of a bulk publish.
	ceType = "application/cloudevents+json"
)

// bench holds what every pair shares: nats-server, a raw nats.go client on
// it, and the running component.
type bench struct {
	sz    sizes
	runID string
	dir   string
	nats  *natsServer
	nc    *nats.Conn
	js    jetstream.JetStream
	comp  *component
	cc    componentCmd
	log   logger.Logger
	out   func(format string, args ...any) // progress
	seq   atomic.Int64
	// cleanup: streams to delete at the end of a pair
	streams []string
}

// daprClient is daprd's own pluggable pub/sub client.
type daprClient interface {
	pubsub.PubSub
	pubsub.BulkPublisher
}

func (b *bench) client(ctx context.Context, c *component, instance string) (daprClient, error) {
	cl := daprpubsub.NewGRPCPubSub(b.log, c.socket)
	err := cl.Init(ctx, pubsub.Metadata{Base: contribmd.Base{Name: instance, Properties: map[string]string{
		"natsURL":    b.nats.url,
		"consumerID": "bench",
	}}})
	if err != nil {
		return nil, fmt.Errorf("init %s: %w", instance, err)
	}
	return cl, nil
}

// topic returns a fresh topic (and so a fresh stream) for one measurement.
func (b *bench) topic(kind string) string {
	return fmt.Sprintf("bench_%s_%s_%d", b.runID, kind, b.seq.Add(1))
}

// streamConfig is what the component creates for a topic when it
// auto-provisions; the raw baselines use the same.
func streamConfig(topic string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name: topic, Subjects: []string{topic}, Storage: jetstream.FileStorage, Replicas: 1,
		MaxMsgs: -1, MaxBytes: -1, Duplicates: 2 * time.Minute, AllowMsgTTL: true,
	}
}

func (b *bench) createStream(ctx context.Context, topic string) error {
	_, err := b.js.CreateStream(ctx, streamConfig(topic))
	if err == nil {
		b.streams = append(b.streams, topic)
	}
	return err
}

// forget marks the stream of a topic the component created for deletion.
func (b *bench) forget(topic string) { b.streams = append(b.streams, topic) }

// cleanup deletes the streams of a pair, once subscriptions had time to end.
func (b *bench) cleanup(ctx context.Context) {
	if len(b.streams) == 0 {
		return
	}
	time.Sleep(300 * time.Millisecond)
	for _, topic := range b.streams {
		name, err := b.js.StreamNameBySubject(ctx, topic)
		if err != nil {
			continue
		}
		_ = b.js.DeleteStream(ctx, name)
	}
	b.streams = nil
}

// meter measures the CPU of one side (processes by pid, or this process
// for raw nats.go) and of nats-server over a measurement. For ours it also
// records this process's CPU: the daprd client side.
type meter struct {
	pids       []int // none: this process
	parts0     []float64
	c0, n0, s0 float64
	t0         time.Time
	nats       int
}

func (b *bench) meter(c *component) meter {
	if c == nil {
		return b.meterPids()
	}
	return b.meterPids(c.Pid())
}

func (b *bench) meterPids(pids ...int) meter {
	m := meter{nats: b.nats.Pid(), pids: pids}
	m.c0 = m.cpu()
	for _, pid := range pids {
		m.parts0 = append(m.parts0, cpuSeconds(pid))
	}
	m.s0 = selfCPU()
	m.n0 = cpuSeconds(m.nats)
	m.t0 = time.Now()
	return m
}

func (m meter) cpu() float64 {
	if len(m.pids) == 0 {
		return selfCPU()
	}
	var sum float64
	for _, pid := range m.pids {
		sum += cpuSeconds(pid)
	}
	return sum
}

func (m meter) stop(msgs int, lat []time.Duration) sample {
	el := time.Since(m.t0)
	s := sample{msgs: msgs, elapsed: el, lat: lat, natsCPU: cpuSeconds(m.nats) - m.n0, cpu: m.cpu() - m.c0}
	if len(m.pids) == 0 {
		s.rss = rssBytes(selfPid)
	} else {
		s.clientCPU = selfCPU() - m.s0
		for i, pid := range m.pids {
			s.rss += rssBytes(pid)
			s.parts = append(s.parts, cpuSeconds(pid)-m.parts0[i])
		}
	}
	return s
}

// rawMsg is the NATS message the component makes of a daprd publish: the
// event, and its id as Nats-Msg-Id (plus Content-Type when daprd sends one).
func rawMsg(topic, id string, data []byte, contentType string) *nats.Msg {
	m := &nats.Msg{Subject: topic, Data: data, Header: nats.Header{}}
	if contentType != "" {
		m.Header.Set("Content-Type", contentType)
	}
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

func await(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// order returns the two measurements of a round in alternating order, so
// that neither side always runs first.
func order(round int, a, c func() error) error {
	if round%2 == 1 {
		a, c = c, a
	}
	if err := a(); err != nil {
		return err
	}
	return c()
}

// ---- pair 1: publish, 1 caller ----

func (b *bench) pair1(ctx context.Context) ([]*comparison, error) {
	cl, err := b.client(ctx, b.comp, "p1")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	conn, err := pluggable.SocketDial(ctx, b.comp.socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	hopClient := proto.NewPubSubClient(conn)
	hopCtx := grpcmd.AppendToOutgoingContext(ctx, "x-component-instance", "p1")

	var out []*comparison
	for _, size := range []int{smallMsg, largeMsg} {
		c := &comparison{
			pair: "1", title: fmt.Sprintf("Publish, 1 caller, %d B", size),
			ours:   &variant{label: "ours: daprd client → socket → component", cpuSrc: "component"},
			target: 1.15, atMost: true,
			explain: "ours per-message time / (raw js.Publish time + bare gRPC hop time), same round",
		}
		raw := &variant{label: "raw js.Publish (sync)", cpuSrc: "bench"}
		hop := &variant{label: "bare gRPC hop (Features RPC)", cpuSrc: "component"}
		c.base = []*variant{raw, hop}
		out = append(out, c)
	}
	n := b.sz.serial
	for r := range b.sz.rounds {
		for k, size := range []int{smallMsg, largeMsg} {
			c := out[k]
			raw, hop := c.base[0], c.base[1]
			err := order(r, func() error {
				topic := b.topic("p1o")
				b.forget(topic)
				ids, data := payloads(topic, n+100, size)
				for i := range 100 { // warm-up: the component provisions the stream
					if err := cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "bench", Topic: topic, Data: data[n+i]}); err != nil {
						return fmt.Errorf("publish: %w", err)
					}
				}
				_ = ids
				lat := make([]time.Duration, n)
				m := b.meter(b.comp)
				for i := range n {
					t := time.Now()
					if err := cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "bench", Topic: topic, Data: data[i]}); err != nil {
						return fmt.Errorf("publish: %w", err)
					}
					lat[i] = time.Since(t)
				}
				c.ours.add(m.stop(n, lat))
				return nil
			}, func() error {
				topic := b.topic("p1r")
				if err := b.createStream(ctx, topic); err != nil {
					return err
				}
				ids, data := payloads(topic, n+100, size)
				for i := range 100 {
					if _, err := b.js.PublishMsg(ctx, rawMsg(topic, ids[n+i], data[n+i], "")); err != nil {
						return err
					}
				}
				lat := make([]time.Duration, n)
				m := b.meter(nil)
				for i := range n {
					t := time.Now()
					if _, err := b.js.PublishMsg(ctx, rawMsg(topic, ids[i], data[i], "")); err != nil {
						return fmt.Errorf("raw publish: %w", err)
					}
					lat[i] = time.Since(t)
				}
				raw.add(m.stop(n, lat))
				return nil
			})
			if err != nil {
				return nil, err
			}
			// The bare hop: an almost empty unary call over the same socket.
			for range 100 {
				if _, err := hopClient.Features(hopCtx, &proto.FeaturesRequest{}); err != nil {
					return nil, fmt.Errorf("features: %w", err)
				}
			}
			lat := make([]time.Duration, n)
			m := b.meter(b.comp)
			for i := range n {
				t := time.Now()
				if _, err := hopClient.Features(hopCtx, &proto.FeaturesRequest{}); err != nil {
					return nil, fmt.Errorf("features: %w", err)
				}
				lat[i] = time.Since(t)
			}
			hop.add(m.stop(n, lat))
			last := len(c.ours.samples) - 1
			c.ratios = append(c.ratios, float64(c.ours.samples[last].perMsg())/
				float64(raw.samples[last].perMsg()+hop.samples[last].perMsg()))
		}
		b.out("  pair 1 round %d/%d done", r+1, b.sz.rounds)
		b.cleanup(ctx)
	}
	for _, c := range out {
		c.detail = pair1Detail
	}
	return out, nil
}

// pair1Detail gives the per-message times the ratio is made of.
func pair1Detail(c *comparison) string {
	raw, hop := c.base[0], c.base[1]
	return fmt.Sprintf("per message (medians): ours %s, raw %s + hop %s = %s",
		fmtDur(c.ours.perMsg()), fmtDur(raw.perMsg()), fmtDur(hop.perMsg()), fmtDur(raw.perMsg()+hop.perMsg()))
}

// ---- pair 2: publish, 64 callers ----

func (b *bench) pair2(ctx context.Context) ([]*comparison, error) {
	const callers = 64
	cl, err := b.client(ctx, b.comp, "p2")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	c := &comparison{
		pair: "2", title: fmt.Sprintf("Publish, %d concurrent callers, %d B", callers, smallMsg),
		ours:    &variant{label: "ours: 64 goroutines calling Publish", cpuSrc: "component"},
		target:  0.6,
		explain: "ours msgs/s / raw msgs/s, same round",
	}
	raw := &variant{label: "raw PublishMsgAsync, 64 in flight", cpuSrc: "bench"}
	hop := &variant{label: "ceiling: bare gRPC hop (Features), 64 callers", cpuSrc: "component"}
	c.base = []*variant{raw, hop}
	conn, err := pluggable.SocketDial(ctx, b.comp.socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	hopClient := proto.NewPubSubClient(conn)
	hopCtx := grpcmd.AppendToOutgoingContext(ctx, "x-component-instance", "p2")
	n := b.sz.concurrent
	for r := range b.sz.rounds {
		err := order(r, func() error {
			topic := b.topic("p2o")
			b.forget(topic)
			_, data := payloads(topic, n+callers, smallMsg)
			if err := cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "bench", Topic: topic, Data: data[n]}); err != nil {
				return err
			}
			s, err := concurrently(n, callers, func(i int) error {
				return cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "bench", Topic: topic, Data: data[i]})
			}, func() meter { return b.meter(b.comp) })
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			c.ours.add(s)
			return nil
		}, func() error {
			topic := b.topic("p2r")
			if err := b.createStream(ctx, topic); err != nil {
				return err
			}
			ids, data := payloads(topic, n+1, smallMsg)
			if _, err := b.js.PublishMsg(ctx, rawMsg(topic, ids[n], data[n], "")); err != nil {
				return err
			}
			lat := make([]time.Duration, n)
			futs := make([]jetstream.PubAckFuture, callers)
			sent := make([]time.Time, callers)
			idx := make([]int, callers)
			wait := func(slot int) error {
				if futs[slot] == nil {
					return nil
				}
				if err := await(ctx, futs[slot]); err != nil {
					return err
				}
				lat[idx[slot]] = time.Since(sent[slot])
				futs[slot] = nil
				return nil
			}
			m := b.meter(nil)
			for i := range n {
				slot := i % callers
				if err := wait(slot); err != nil {
					return fmt.Errorf("raw publish: %w", err)
				}
				sent[slot], idx[slot] = time.Now(), i
				f, err := b.js.PublishMsgAsync(rawMsg(topic, ids[i], data[i], ""))
				if err != nil {
					return fmt.Errorf("raw publish: %w", err)
				}
				futs[slot] = f
			}
			for slot := range callers {
				if err := wait(slot); err != nil {
					return fmt.Errorf("raw publish: %w", err)
				}
			}
			raw.add(m.stop(n, lat))
			return nil
		})
		if err != nil {
			return nil, err
		}
		s, err := concurrently(n, callers, func(int) error {
			_, err := hopClient.Features(hopCtx, &proto.FeaturesRequest{})
			return err
		}, func() meter { return b.meter(b.comp) })
		if err != nil {
			return nil, fmt.Errorf("features: %w", err)
		}
		hop.add(s)
		last := len(raw.samples) - 1
		c.ratios = append(c.ratios, c.ours.samples[last].rate()/raw.samples[last].rate())
		b.out("  pair 2 round %d/%d done", r+1, b.sz.rounds)
		b.cleanup(ctx)
	}
	c.detail = pair2Detail
	return []*comparison{c}, nil
}

// pair2Detail sets ours against the ceiling the hop allows: the same number
// of callers making empty calls.
func pair2Detail(c *comparison) string {
	raw, hop := c.base[0], c.base[1]
	return fmt.Sprintf("rates (medians): ours %.0f msgs/s, raw %.0f, ceiling %.0f calls/s; ours / ceiling = %.2f, ceiling / raw = %.2f",
		c.ours.rate(), raw.rate(), hop.rate(), c.ours.rate()/hop.rate(), hop.rate()/raw.rate())
}

// concurrently runs call for i in [0, n) on the given number of goroutines,
// timing each call, between start() and the meter's stop.
func concurrently(n, callers int, call func(i int) error, start func() meter) (sample, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	m := start()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t := time.Now()
				if err := call(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	return m.stop(n, lat), firstErr
}

// ---- pair 3: bulk publish, 100 per call ----

func (b *bench) pair3(ctx context.Context) ([]*comparison, error) {
	const batch = 100
	cl, err := b.client(ctx, b.comp, "p3")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	c := &comparison{
		pair: "3", title: fmt.Sprintf("BulkPublish, %d entries per call, %d B", batch, smallMsg),
		ours:    &variant{label: "ours: BulkPublish, 1 caller (latency per call)", cpuSrc: "component"},
		target:  0.7,
		explain: "ours msgs/s / raw msgs/s, same round",
	}
	raw := &variant{label: "raw 100 × PublishMsgAsync + PublishAsyncComplete", cpuSrc: "bench"}
	c.base = []*variant{raw}
	n := b.sz.bulk / batch * batch
	for r := range b.sz.rounds {
		err := order(r, func() error {
			topic := b.topic("p3o")
			b.forget(topic)
			ids, data := payloads(topic, n+batch, smallMsg)
			req := func(from int) *pubsub.BulkPublishRequest {
				e := make([]pubsub.BulkMessageEntry, batch)
				for i := range batch {
					e[i] = pubsub.BulkMessageEntry{EntryId: strconv.Itoa(i), Event: data[from+i], ContentType: ceType}
				}
				return &pubsub.BulkPublishRequest{PubsubName: "bench", Topic: topic, Entries: e}
			}
			_ = ids
			if _, err := cl.BulkPublish(ctx, req(n)); err != nil {
				return fmt.Errorf("bulk publish: %w", err)
			}
			var lat []time.Duration
			m := b.meter(b.comp)
			for from := 0; from < n; from += batch {
				t := time.Now()
				resp, err := cl.BulkPublish(ctx, req(from))
				if err == nil && len(resp.FailedEntries) > 0 {
					err = resp.FailedEntries[0].Error
				}
				if err != nil {
					return fmt.Errorf("bulk publish: %w", err)
				}
				lat = append(lat, time.Since(t))
			}
			c.ours.add(m.stop(n, lat))
			return nil
		}, func() error {
			topic := b.topic("p3r")
			if err := b.createStream(ctx, topic); err != nil {
				return err
			}
			ids, data := payloads(topic, n+1, smallMsg)
			if _, err := b.js.PublishMsg(ctx, rawMsg(topic, ids[n], data[n], ceType)); err != nil {
				return err
			}
			var lat []time.Duration
			futs := make([]jetstream.PubAckFuture, batch)
			m := b.meter(nil)
			for from := 0; from < n; from += batch {
				t := time.Now()
				for i := range batch {
					f, err := b.js.PublishMsgAsync(rawMsg(topic, ids[from+i], data[from+i], ceType))
					if err != nil {
						return fmt.Errorf("raw publish: %w", err)
					}
					futs[i] = f
				}
				if _, err := natstest.Within(b.js.PublishAsyncComplete(), 30*time.Second); err != nil {
					return fmt.Errorf("raw publish: PublishAsyncComplete: %w", err)
				}
				for _, f := range futs {
					if err := await(ctx, f); err != nil {
						return fmt.Errorf("raw publish: %w", err)
					}
				}
				lat = append(lat, time.Since(t))
			}
			raw.add(m.stop(n, lat))
			return nil
		})
		if err != nil {
			return nil, err
		}
		last := len(raw.samples) - 1
		c.ratios = append(c.ratios, c.ours.samples[last].rate()/raw.samples[last].rate())
		b.out("  pair 3 round %d/%d done", r+1, b.sz.rounds)
		b.cleanup(ctx)
	}
	return []*comparison{c}, nil
}

// prefill publishes n events of size bytes into a fresh stream for topic.
func (b *bench) prefill(ctx context.Context, topic string, n, size int) error {
	if err := b.createStream(ctx, topic); err != nil {
		return err
	}
	ids, data := payloads(topic, n, size)
	for i := range n {
		if _, err := b.js.PublishMsgAsync(rawMsg(topic, ids[i], data[i], "")); err != nil {
			return err
		}
		if i%1000 == 999 {
			select {
			case <-b.js.PublishAsyncComplete():
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if _, err := natstest.Within(b.js.PublishAsyncComplete(), 30*time.Second); err != nil {
		return fmt.Errorf("prefill: not acknowledged: %w", err)
	}
	return nil
}

// counter signals when n messages arrived.
type counter struct {
	n    int64
	got  atomic.Int64
	done chan struct{}
	once sync.Once
}

func newCounter(n int) *counter { return &counter{n: int64(n), done: make(chan struct{})} }

func (c *counter) inc() {
	if c.got.Add(1) == c.n {
		c.once.Do(func() { close(c.done) })
	}
}

func (c *counter) wait(ctx context.Context, timeout time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("received %d of %d messages within %s", c.got.Load(), c.n, timeout)
	}
}

// ---- pair 4: delivery of a backlog ----

func (b *bench) pair4(ctx context.Context) ([]*comparison, error) {
	cl, err := b.client(ctx, b.comp, "p4")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	n := b.sz.backlog
	c := &comparison{
		pair: "4", title: fmt.Sprintf("Delivery of a %d-message backlog with acks, %d B", n, smallMsg),
		ours:    &variant{label: "ours: PullMessages → daprd client Subscribe, serial acks", cpuSrc: "component", noLatency: true},
		target:  0.7,
		explain: "ours msgs/s / raw msgs/s, same round (from subscribe to the last message)",
	}
	raw := &variant{label: "raw pull consumer Consume + Ack", cpuSrc: "bench", noLatency: true}
	hop := &variant{label: "ceiling: bare PullMessages stream, same client", cpuSrc: "component", noLatency: true}
	c.base = []*variant{raw, hop}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ceil, err := componentCmd{bin: self, args: []string{"-stream-ceiling"}}.start(ctx, filepath.Join(b.dir, "sock-ceiling"), "ceiling")
	if err != nil {
		return nil, fmt.Errorf("stream ceiling: %w", err)
	}
	defer ceil.Stop(5 * time.Second)
	hopClient, err := b.client(ctx, ceil, "p4c")
	if err != nil {
		return nil, err
	}
	defer hopClient.Close()
	for r := range b.sz.rounds {
		err := order(r, func() error {
			topic := b.topic("p4o")
			if err := b.prefill(ctx, topic, n, smallMsg); err != nil {
				return err
			}
			cnt := newCounter(n)
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			m := b.meter(b.comp)
			err := cl.Subscribe(sctx, pubsub.SubscribeRequest{Topic: topic, Metadata: map[string]string{"deliverPolicy": "all"}},
				func(context.Context, *pubsub.NewMessage) error { cnt.inc(); return nil })
			if err != nil {
				return err
			}
			if err := cnt.wait(ctx, 5*time.Minute); err != nil {
				return fmt.Errorf("ours: %w", err)
			}
			c.ours.add(m.stop(n, nil))
			return nil
		}, func() error {
			topic := b.topic("p4r")
			if err := b.prefill(ctx, topic, n, smallMsg); err != nil {
				return err
			}
			cnt := newCounter(n)
			m := b.meter(nil)
			cons, err := b.js.CreateConsumer(ctx, topic, jetstream.ConsumerConfig{
				Durable: "raw", FilterSubject: topic, DeliverPolicy: jetstream.DeliverAllPolicy,
				AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 1000,
			})
			if err != nil {
				return err
			}
			cc, err := cons.Consume(func(msg jetstream.Msg) {
				_ = msg.Ack()
				cnt.inc()
			})
			if err != nil {
				return err
			}
			defer cc.Stop()
			if err := cnt.wait(ctx, 5*time.Minute); err != nil {
				return fmt.Errorf("raw: %w", err)
			}
			raw.add(m.stop(n, nil))
			return nil
		})
		if err != nil {
			return nil, err
		}
		cnt := newCounter(n)
		sctx, cancel := context.WithCancel(ctx)
		m := b.meter(ceil)
		err = hopClient.Subscribe(sctx, pubsub.SubscribeRequest{Topic: "ceiling", Metadata: map[string]string{"count": strconv.Itoa(n)}},
			func(context.Context, *pubsub.NewMessage) error { cnt.inc(); return nil })
		if err == nil {
			err = cnt.wait(ctx, 5*time.Minute)
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("stream ceiling: %w", err)
		}
		hop.add(m.stop(n, nil))
		last := len(raw.samples) - 1
		c.ratios = append(c.ratios, c.ours.samples[last].rate()/raw.samples[last].rate())
		b.out("  pair 4 round %d/%d done", r+1, b.sz.rounds)
		b.cleanup(ctx)
	}
	return []*comparison{c}, nil
}

// latencies collects publish→handler latencies.
type latencies struct {
	mu  sync.Mutex
	lat []time.Duration
	bad int
}

func (l *latencies) record(data []byte) {
	now := time.Now()
	t, ok := sentAt(data)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !ok {
		l.bad++
		return
	}
	l.lat = append(l.lat, now.Sub(t))
}

func (l *latencies) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lat)
}

func (l *latencies) reset() {
	l.mu.Lock()
	l.lat = l.lat[:0]
	l.mu.Unlock()
}

func (l *latencies) take() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.lat...)
}

// paced calls send for every tick of rate per second for d, on a fixed
// schedule (a late send does not shift the ones after it).
func paced(ctx context.Context, rate int, d time.Duration, send func(i int, now time.Time) error) (int, error) {
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			return i, ctx.Err()
		}
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		if err := send(i, time.Now()); err != nil {
			return i, err
		}
	}
	return n, nil
}

// warm publishes until the subscriber has seen one message, so the
// measurement starts with the consumer in place.
func warm(ctx context.Context, l *latencies, publish func(now time.Time) error) error {
	deadline := time.Now().Add(30 * time.Second)
	for l.count() == 0 {
		if time.Now().After(deadline) {
			return errors.New("the subscription received nothing within 30s")
		}
		if err := publish(time.Now()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	time.Sleep(200 * time.Millisecond)
	l.reset()
	return nil
}

func waitCount(l *latencies, n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for l.count() < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- pair 5: latency at a paced 1,000 msgs/s ----

func (b *bench) pair5(ctx context.Context) ([]*comparison, error) {
	const rate = 1000
	cl, err := b.client(ctx, b.comp, "p5")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	c := &comparison{
		pair: "5", title: fmt.Sprintf("Publish → handler latency at %d msgs/s, %d B", rate, smallMsg),
		ours:   &variant{label: "ours: daprd client Publish → component → daprd client handler", cpuSrc: "component"},
		target: 1, atMost: true,
		explain: "ours p99 / (raw p99 + 1 ms), same round: ≤ 1 means the added p99 is under 1 ms",
	}
	raw := &variant{label: "raw js.Publish → pull Consume handler", cpuSrc: "bench"}
	c.base = []*variant{raw}
	for r := range b.sz.rounds {
		err := order(r, func() error {
			topic := b.topic("p5o")
			b.forget(topic)
			l := &latencies{}
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			err := cl.Subscribe(sctx, pubsub.SubscribeRequest{Topic: topic},
				func(_ context.Context, m *pubsub.NewMessage) error { l.record(m.Data); return nil })
			if err != nil {
				return err
			}
			id := 0
			publish := func(now time.Time) error {
				id++
				return cl.Publish(ctx, &pubsub.PublishRequest{PubsubName: "bench", Topic: topic,
					Data: cloudEvent(topic+"-"+strconv.Itoa(id), now, smallMsg)})
			}
			if err := warm(ctx, l, publish); err != nil {
				return fmt.Errorf("ours: %w", err)
			}
			m := b.meter(b.comp)
			sent, err := paced(ctx, rate, b.sz.paced, func(_ int, now time.Time) error { return publish(now) })
			if err != nil {
				return err
			}
			waitCount(l, sent, 10*time.Second)
			s := m.stop(sent, l.take())
			if s.elapsed > b.sz.paced {
				// Only the paced part counts for the rate, not the wait for stragglers.
				s.elapsed = b.sz.paced
			}
			s.msgs = len(s.lat)
			c.ours.add(s)
			return nil
		}, func() error {
			topic := b.topic("p5r")
			if err := b.createStream(ctx, topic); err != nil {
				return err
			}
			l := &latencies{}
			cons, err := b.js.CreateConsumer(ctx, topic, jetstream.ConsumerConfig{
				Durable: "raw", FilterSubject: topic, AckPolicy: jetstream.AckExplicitPolicy,
				AckWait: 30 * time.Second, MaxAckPending: 1000,
			})
			if err != nil {
				return err
			}
			cc, err := cons.Consume(func(msg jetstream.Msg) { l.record(msg.Data()); _ = msg.Ack() })
			if err != nil {
				return err
			}
			defer cc.Stop()
			id := 0
			publish := func(now time.Time) error {
				id++
				mid := topic + "-" + strconv.Itoa(id)
				_, err := b.js.PublishMsg(ctx, rawMsg(topic, mid, cloudEvent(mid, now, smallMsg), ""))
				return err
			}
			if err := warm(ctx, l, publish); err != nil {
				return fmt.Errorf("raw: %w", err)
			}
			m := b.meter(nil)
			sent, err := paced(ctx, rate, b.sz.paced, func(_ int, now time.Time) error { return publish(now) })
			if err != nil {
				return err
			}
			waitCount(l, sent, 10*time.Second)
			s := m.stop(sent, l.take())
			if s.elapsed > b.sz.paced {
				s.elapsed = b.sz.paced
			}
			s.msgs = len(s.lat)
			raw.add(s)
			return nil
		})
		if err != nil {
			return nil, err
		}
		last := len(raw.samples) - 1
		op99 := percentile(sortedCopy(c.ours.samples[last].lat), 99)
		rp99 := percentile(sortedCopy(raw.samples[last].lat), 99)
		c.ratios = append(c.ratios, float64(op99)/float64(rp99+time.Millisecond))
		b.out("  pair 5 round %d/%d done", r+1, b.sz.rounds)
		b.cleanup(ctx)
	}
	c.detail = pair5Detail
	return []*comparison{c}, nil
}

// pair5Detail gives the latency ours adds to raw nats.go.
func pair5Detail(c *comparison) string {
	raw := c.base[0]
	return fmt.Sprintf("added latency (medians over rounds): p50 %+.3f ms, p99 %+.3f ms",
		ms(c.ours.p(50)-raw.p(50)), ms(c.ours.p(99)-raw.p(99)))
}

// heapSnapshot asks a self-hosted component (-cpuprofile) for a heap
// profile and its memory statistics.
func (b *bench) heapSnapshot(c *component) {
	if b.cc.profile != "" {
		_ = c.Signal(syscall.SIGUSR1)
	}
}

// ---- pair 7: RSS after 1M messages ----

func (b *bench) pair7(ctx context.Context) ([]*comparison, error) {
	const batch, window = 100, 10000
	total := b.sz.rssTotal
	first := 10000
	c := &comparison{
		pair: "7", title: fmt.Sprintf("Component RSS after %s messages (BulkPublish + Subscribe, %d B)", count(total), smallMsg),
		ours:   &variant{label: fmt.Sprintf("ours: after %s messages", count(total)), cpuSrc: "component", noLatency: true},
		target: 1.2, atMost: true,
		explain: fmt.Sprintf("component VmRSS after %s / after the first %s (a fresh component process)", count(total), count(first)),
	}
	base := &variant{label: fmt.Sprintf("ours: after the first %s", count(first)), cpuSrc: "component", noLatency: true}
	c.base = []*variant{base}
	comp, err := b.cc.start(ctx, b.dir+"/sock-p7", "p7")
	if err != nil {
		return nil, err
	}
	defer comp.Stop(15 * time.Second)
	cl, err := b.client(ctx, comp, "p7")
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	topic := b.topic("p7")
	b.forget(topic)
	var got atomic.Int64
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err = cl.Subscribe(sctx, pubsub.SubscribeRequest{Topic: topic, Metadata: map[string]string{"deliverPolicy": "all"}},
		func(context.Context, *pubsub.NewMessage) error { got.Add(1); return nil })
	if err != nil {
		return nil, err
	}
	pubErr := make(chan error, 1)
	go func() {
		sent := 0
		for sent < total {
			for int64(sent)-got.Load() >= window {
				if sctx.Err() != nil {
					pubErr <- sctx.Err()
					return
				}
				time.Sleep(time.Millisecond)
			}
			now := time.Now()
			e := make([]pubsub.BulkMessageEntry, batch)
			for i := range batch {
				id := topic + "-" + strconv.Itoa(sent+i)
				e[i] = pubsub.BulkMessageEntry{EntryId: strconv.Itoa(i), Event: cloudEvent(id, now, smallMsg), ContentType: ceType}
			}
			resp, err := cl.BulkPublish(sctx, &pubsub.BulkPublishRequest{PubsubName: "bench", Topic: topic, Entries: e})
			if err == nil && len(resp.FailedEntries) > 0 {
				err = resp.FailedEntries[0].Error
			}
			if err != nil {
				pubErr <- err
				return
			}
			sent += batch
		}
		pubErr <- nil
	}()
	var m meter
	var s10k sample
	sampled := false
	progress := time.Now()
	m = b.meter(comp)
	for got.Load() < int64(total) {
		select {
		case err := <-pubErr:
			if err != nil {
				return nil, fmt.Errorf("bulk publish: %w", err)
			}
			pubErr = nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		g := got.Load()
		if !sampled && g >= int64(first) {
			sampled = true
			s10k = m.stop(int(g), nil)
			b.heapSnapshot(comp)
		}
		if time.Since(progress) > 15*time.Second {
			progress = time.Now()
			b.out("  pair 7: %s of %s delivered, RSS %s", count(int(g)), count(total), fmtMB(rssBytes(comp.Pid())))
		}
		if time.Since(m.t0) > 8*time.Minute {
			return nil, fmt.Errorf("pair 7: only %d of %d delivered within 8 minutes", g, total)
		}
	}
	s := m.stop(total, nil)
	s.peakRSS = statusBytes(comp.Pid(), "VmHWM")
	b.heapSnapshot(comp)
	base.add(s10k)
	c.ours.add(s)
	c.ratios = []float64{float64(s.rss) / float64(s10k.rss)}
	c.detail = func(c *comparison) string {
		return fmt.Sprintf("component VmHWM (peak RSS) %s; the publisher keeps at most %s messages ahead of the subscriber; msgs/s is end to end",
			fmtMB(c.ours.peakRSS()), count(window))
	}
	cancel()
	b.cleanup(ctx)
	return []*comparison{c}, nil
}
