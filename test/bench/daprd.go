package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// daprdVersion is the daprd pair 6 runs through.
const daprdVersion = "v1.18.1"

func daprdBinary() string {
	if p := os.Getenv("DAPRD"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "dapr-nats-jetstream", "daprd-"+daprdVersion+"-allcomponents")
}

// app is the application behind daprd: programmatic subscriptions from
// /dapr/subscribe, and one route per topic that answers SUCCESS at once.
type app struct {
	url  string
	srv  *http.Server
	mu   sync.Mutex
	subs []appSub
	seen map[string]*topicSeen
}

type appSub struct {
	PubsubName string `json:"pubsubname"`
	Topic      string `json:"topic"`
	Route      string `json:"route"`
}

// topicSeen is what arrived on one topic.
type topicSeen struct {
	lat   latencies
	n     atomic.Int64
	mu    sync.Mutex
	first time.Time
	last  time.Time
	one   chan struct{} // closed on the first message
	once  sync.Once
}

func startApp() (*app, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &app{url: l.Addr().String(), seen: map[string]*topicSeen{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dapr/subscribe", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		b, _ := json.Marshal(a.subs)
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("POST /ev/{topic}", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		now := time.Now()
		ts := a.topic(r.PathValue("topic"))
		ts.lat.record(body)
		ts.mu.Lock()
		if ts.first.IsZero() {
			ts.first = now
		}
		ts.last = now
		ts.mu.Unlock()
		ts.n.Add(1)
		ts.once.Do(func() { close(ts.one) })
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"SUCCESS"}`))
	})
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(l) }()
	return a, nil
}

func (a *app) port() string {
	_, p, _ := net.SplitHostPort(a.url)
	return p
}

func (a *app) topic(t string) *topicSeen {
	a.mu.Lock()
	defer a.mu.Unlock()
	ts, ok := a.seen[t]
	if !ok {
		ts = &topicSeen{one: make(chan struct{})}
		a.seen[t] = ts
	}
	return ts
}

// subscribe sets the subscriptions daprd reads when it starts.
func (a *app) subscribe(subs ...appSub) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.subs = nil
	for _, s := range subs {
		s.Route = "/ev/" + s.Topic
		a.subs = append(a.subs, s)
	}
}

// daprd is one daprd process with its HTTP API address.
type daprd struct {
	*natstest.Proc
	http string
}

func componentYAML(name, typ, natsURL string, extra map[string]string) string {
	y := fmt.Sprintf("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: %s\nspec:\n  type: %s\n  version: v1\n  metadata:\n  - name: natsURL\n    value: %q\n", name, typ, natsURL)
	for k, v := range extra {
		y += fmt.Sprintf("  - name: %s\n    value: %q\n", k, v)
	}
	return y
}

// startDaprd starts daprd as `dapr run` does, with the given components,
// and waits until its HTTP API is healthy.
func startDaprd(ctx context.Context, bin, dir, sockets string, a *app, components map[string]string) (*daprd, error) {
	res := filepath.Join(dir, "resources")
	_ = os.RemoveAll(res)
	if err := os.MkdirAll(res, 0o755); err != nil {
		return nil, err
	}
	for name, y := range components {
		if err := os.WriteFile(filepath.Join(res, name+".yaml"), []byte(y), 0o644); err != nil {
			return nil, err
		}
	}
	ports := make([]string, 5)
	for i := range ports {
		p, err := natstest.FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = strconv.Itoa(p)
	}
	p, err := startChild(natstest.Spec{Name: "daprd", Bin: bin, Env: []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + sockets}, Args: []string{
		"--app-id", "bench", "--app-port", a.port(), "--app-protocol", "http",
		"--resources-path", res, "--dapr-http-port", ports[0], "--dapr-grpc-port", ports[1],
		"--metrics-port", ports[2], "--dapr-internal-grpc-port", ports[3], "--profile-port", ports[4],
		"--dapr-listen-addresses", "127.0.0.1", "--dapr-graceful-shutdown-seconds", "2", "--log-level", "warn"}})
	if err != nil {
		return nil, err
	}
	d := &daprd{Proc: p, http: "http://127.0.0.1:" + ports[0]}
	err = p.WaitFor(60*time.Second, pollEvery, unlessDone(ctx, func() error {
		resp, err := http.Get(d.http + "/v1.0/healthz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	}))
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, err
	}
	return d, nil
}

var httpClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 128, MaxIdleConnsPerHost: 128, IdleConnTimeout: time.Minute},
}

// publish sends {"t":<now>,"p":"..."} through daprd's HTTP publish API;
// daprd wraps it into a CloudEvent.
func (d *daprd) publish(ctx context.Context, pubsubName, topic string, now time.Time, size int) error {
	body := fmt.Sprintf(`{"t":%d,"p":"%s"}`, now.UnixNano(), padding(size))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.http+"/v1.0/publish/"+pubsubName+"/"+topic, bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("publish to %s/%s: %s %s", pubsubName, topic, resp.Status, bytes.TrimSpace(b))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

var pad = bytes.Repeat([]byte("x"), 4096)

func padding(size int) string { return string(pad[:max(min(size-30, len(pad)), 0)]) }

// ---- pair 6: through daprd ----

// Pair 6 meters ours as daprd and the component, in this order (the
// variant's parts); the built-in as daprd alone.
const (
	daprdPart     = 0
	componentPart = 1
)

func (b *bench) pair6(ctx context.Context) ([]*comparison, error) {
	bin := daprdBinary()
	titles := []string{
		"daprd: HTTP publish, 1 caller",
		"daprd: HTTP publish, 32 callers",
		fmt.Sprintf("daprd: delivery of a %s backlog to the app", count(b.sz.daprdBacklog)),
		"daprd: paced 1,000 msgs/s publish → app",
	}
	notRun := func(why string) []*comparison {
		out := make([]*comparison, len(titles))
		for i, t := range titles {
			out[i] = &comparison{pair: "6", title: t, target: 1, notRun: why}
		}
		out[3].atMost = true
		return out
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return notRun(fmt.Sprintf("no daprd binary at %s (build it with test/daprd/build.sh %s, or set DAPRD)", bin, daprdVersion)), nil
	}
	dir := filepath.Join(b.dir, "p6")
	sockets := filepath.Join(dir, "sockets")
	comp, err := b.cc.start(ctx, sockets, "p6")
	if err != nil {
		return nil, err
	}
	defer comp.Stop(15 * time.Second)
	a, err := startApp()
	if err != nil {
		return nil, err
	}
	defer a.srv.Close()

	ours := componentYAML("ours", "pubsub.nats-jetstream", b.nats.url, map[string]string{"deliverPolicy": "all"})
	builtin := componentYAML("builtin", "pubsub.jetstream", b.nats.url, nil)
	mk := func(i int, explain string) *comparison {
		return &comparison{
			pair: "6", title: titles[i], target: 1, explain: explain,
			ours: &variant{label: "ours: daprd → socket → component", cpuSrc: "daprd"},
			base: []*variant{{label: "built-in pubsub.jetstream in the same daprd", cpuSrc: "daprd"}},
		}
	}
	pub1 := mk(0, "ours msgs/s / built-in msgs/s, same round")
	pub32 := mk(1, "ours msgs/s / built-in msgs/s, same round")
	deliv := mk(2, "ours msgs/s / built-in msgs/s, same round (first to last message at the app; a fresh daprd per measurement)")
	pacedC := mk(3, "ours p50 / 2 ms (≤ 1 means p50 under 2 ms); ours must also keep up (every message delivered, at ≥ 99% of the paced rate)")
	pacedC.atMost = true
	deliv.ours.noLatency, deliv.base[0].noLatency = true, true
	deliv.deliveredCPU = "component CPU per delivered message"
	// The paced component also publishes each message it delivers.
	pacedC.deliveredCPU = "component CPU per delivered message, its publish included"
	const size = smallMsg
	rounds := b.sz.daprdRounds

	// One daprd with both components for publishing and the paced runs. The
	// paced topics are subscribed from the start, so their streams exist
	// first (the built-in never creates one).
	var pacedTopics [][2]string
	var subs []appSub
	for range rounds {
		to, tb := b.topic("p6po"), b.topic("p6pb")
		for _, t := range []string{to, tb} {
			if err := b.createStream(ctx, t); err != nil {
				return nil, err
			}
		}
		pacedTopics = append(pacedTopics, [2]string{to, tb})
		subs = append(subs, appSub{PubsubName: "ours", Topic: to}, appSub{PubsubName: "builtin", Topic: tb})
	}
	a.subscribe(subs...)
	d, err := startDaprd(ctx, bin, filepath.Join(dir, "main"), sockets, a, map[string]string{"ours": ours, "builtin": builtin})
	if err != nil {
		return nil, fmt.Errorf("daprd: %w", err)
	}
	defer d.Stop(10 * time.Second)
	b.out("  pair 6: daprd pid %d, component pid %d", d.Pid(), comp.Pid())
	meterFor := func(name string) func() meter {
		if name == "ours" {
			return func() meter { return b.meterPids(d.Pid(), comp.Pid()) }
		}
		return func() meter { return b.meterPids(d.Pid()) }
	}
	both := func(r int, f func(name string, v *variant) error, c *comparison) error {
		err := order(r, func() error { return f("ours", c.ours) }, func() error { return f("builtin", c.base[0]) })
		if err != nil {
			return err
		}
		last := len(c.ours.samples) - 1
		c.ratios = append(c.ratios, c.ours.samples[last].rate()/c.base[0].samples[last].rate())
		return nil
	}
	for r := range rounds {
		for _, callers := range []int{1, 32} {
			c, n := pub1, b.sz.daprdSerial
			if callers > 1 {
				c, n = pub32, b.sz.daprdConc
			}
			err := both(r, func(name string, v *variant) error {
				topic := b.topic("p6w" + name[:1])
				if err := b.createStream(ctx, topic); err != nil {
					return err
				}
				for range 50 {
					if err := d.publish(ctx, name, topic, time.Now(), size); err != nil {
						return err
					}
				}
				s, err := concurrently(n, callers, func(int) error {
					return d.publish(ctx, name, topic, time.Now(), size)
				}, meterFor(name))
				if err != nil {
					return err
				}
				v.add(s)
				return nil
			}, c)
			if err != nil {
				return nil, err
			}
		}
		// Paced: ours and the built-in on their own subscribed topics.
		err := order(r, func() error {
			return b.daprdPaced(ctx, d, a, "ours", pacedTopics[r][0], pacedC.ours, meterFor("ours"))
		}, func() error {
			return b.daprdPaced(ctx, d, a, "builtin", pacedTopics[r][1], pacedC.base[0], meterFor("builtin"))
		})
		if err != nil {
			return nil, err
		}
		last := len(pacedC.ours.samples) - 1
		pacedC.ratios = append(pacedC.ratios, float64(percentile(sortedCopy(pacedC.ours.samples[last].lat), 50))/float64(2*time.Millisecond))
		b.out("  pair 6 publish and paced round %d/%d done", r+1, rounds)
	}
	d.Stop(10 * time.Second)
	pacedC.passExtra = keptUp

	// Delivery of a backlog: a fresh daprd per measurement, subscribed to one
	// pre-filled topic, so that the drain starts when daprd subscribes.
	for r := range rounds {
		err := both(r, func(name string, v *variant) error {
			topic := b.topic("p6d" + name[:1])
			n := b.sz.daprdBacklog
			if err := b.prefill(ctx, topic, n, size); err != nil {
				return err
			}
			a.subscribe(appSub{PubsubName: name, Topic: topic})
			comps := map[string]string{"ours": ours}
			if name == "builtin" {
				comps = map[string]string{"builtin": builtin}
			}
			dd, err := startDaprd(ctx, bin, filepath.Join(dir, "d-"+topic), sockets, a, comps)
			if err != nil {
				return fmt.Errorf("daprd: %w", err)
			}
			defer dd.Stop(10 * time.Second)
			ts := a.topic(topic)
			select {
			case <-ts.one:
			case <-time.After(60 * time.Second):
				return fmt.Errorf("%s: nothing delivered within 60s of daprd start\n%s", name, dd.Tail(20))
			case <-ctx.Done():
				return ctx.Err()
			}
			pids := []int{dd.Pid()}
			if name == "ours" {
				pids = append(pids, comp.Pid())
			}
			m := b.meterPids(pids...)
			got0 := ts.n.Load()
			deadline := time.Now().Add(3 * time.Minute)
			for ts.n.Load() < int64(n) {
				if time.Now().After(deadline) {
					return fmt.Errorf("%s: %d of %d delivered within 3 minutes", name, ts.n.Load(), n)
				}
				time.Sleep(5 * time.Millisecond)
			}
			s := m.stop(int(int64(n)-got0), nil)
			ts.mu.Lock()
			s.msgs, s.elapsed = n-1, ts.last.Sub(ts.first)
			ts.mu.Unlock()
			v.add(s)
			return nil
		}, deliv)
		if err != nil {
			return nil, err
		}
		b.out("  pair 6 delivery round %d/%d done", r+1, rounds)
	}
	b.cleanup(ctx)
	return []*comparison{pub1, pub32, deliv, pacedC}, nil
}

// keptUp is the paced row's extra condition: ours delivered every round, at
// 99% of the paced 1,000 msgs/s or more.
func keptUp(c *comparison) (bool, string) {
	rate := c.ours.rate()
	ok := rate >= 0.99*1000
	for _, s := range c.ours.samples {
		ok = ok && s.msgs > 0
	}
	return ok, fmt.Sprintf("ours kept up: %v (median delivered rate %.0f msgs/s; p50 ours %s vs built-in %s)",
		ok, rate, fmtDur(c.ours.p(50)), fmtDur(c.base[0].p(50)))
}

// daprdPaced publishes at 1,000 msgs/s through daprd for the paced duration
// and records publish→app latencies. Each publish runs in its own goroutine
// (at most 64 at once) so that a slow HTTP call does not hold back the
// schedule.
func (b *bench) daprdPaced(ctx context.Context, d *daprd, a *app, name, topic string, v *variant, start func() meter) error {
	const rate = 1000
	ts := a.topic(topic)
	if err := warm(ctx, &ts.lat, func(now time.Time) error { return d.publish(ctx, name, topic, now, smallMsg) }); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	m := start()
	sent, err := paced(ctx, rate, b.sz.daprdPaced, func(_ int, now time.Time) error {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := d.publish(ctx, name, topic, now, smallMsg); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
		return nil
	})
	wg.Wait()
	if err == nil {
		err = firstErr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	// Keeping up: everything arrives within a second of the last send.
	waitCount(&ts.lat, sent, time.Second)
	s := m.stop(sent, ts.lat.take())
	s.msgs = len(s.lat)
	s.elapsed = b.sz.daprdPaced
	if len(s.lat) < sent {
		// Not kept up: count only what arrived in time, which lowers the rate.
		waitCount(&ts.lat, sent, 20*time.Second)
	}
	v.add(s)
	if s.msgs == 0 {
		return errors.New(name + ": nothing delivered")
	}
	return nil
}
