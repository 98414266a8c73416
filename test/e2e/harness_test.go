//go:build e2e

// Package e2e drives a real daprd (v1.18.1 and v1.14.0) with this component
// and the tweet app: app → daprd → component → JetStream → component →
// daprd → app. Run it with `make e2e`, which builds daprd first.
//
// Environment:
//
//	DAPRD_BINARIES    "v1.18.1=/path/daprd,v1.14.0=/path/daprd"; by default
//	                  $DAPRD_CACHE (or ~/.cache/dapr-nats-jetstream)/daprd-<version>-allcomponents
//	E2E_REQUIRE_ALL   if set, a missing daprd binary fails the run instead of skipping
//	E2E_LOG_DIR       if set, every process's whole output is written there
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// Versions are the daprd versions every scenario runs on.
var Versions = []string{"v1.18.1", "v1.14.0"}

var (
	componentBin string
	appBin       string
	daprdBins    = map[string]string{}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	defer natstest.RemoveBuilds()
	var err error
	if componentBin, err = natstest.BuildBinary(natstest.ComponentPackage); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if appBin, err = natstest.BuildBinary(natstest.ComponentPackage + "/test/e2e/tweetapp"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	cache := os.Getenv("DAPRD_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "dapr-nats-jetstream")
	}
	for _, v := range Versions {
		daprdBins[v] = filepath.Join(cache, "daprd-"+v+"-allcomponents")
	}
	for _, kv := range strings.Split(os.Getenv("DAPRD_BINARIES"), ",") {
		if v, path, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			daprdBins[v] = path
		}
	}
	return m.Run()
}

// eachVersion runs f as a parallel subtest per daprd version. A version whose
// binary is missing is skipped, unless E2E_REQUIRE_ALL is set.
func eachVersion(t *testing.T, f func(t *testing.T, v string)) {
	t.Parallel()
	for _, v := range Versions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			bin := daprdBins[v]
			if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
				msg := fmt.Sprintf("daprd %s not found at %s (build it with test/daprd/build.sh %s, or name it in DAPRD_BINARIES)", v, bin, v)
				if os.Getenv("E2E_REQUIRE_ALL") != "" {
					t.Fatal(msg + "; E2E_REQUIRE_ALL is set")
				}
				t.Skip(msg)
			}
			f(t, v)
		})
	}
}

// env is one scenario's world: its own nats-server, and the nodes it starts.
type env struct {
	t       *testing.T
	version string
	ns      *server.Server
	natsDir string              // ns's store, kept through an outage
	js      jetstream.JetStream // a plain client, to check what the component did
	ctx     context.Context
	nodes   int // nodes made so far, to name their log folders
}

func newEnv(t *testing.T, version string) *env {
	t.Helper()
	natsDir := t.TempDir()
	ns, err := stack.StartNATS(natsDir)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, version: version, ns: ns, natsDir: natsDir}
	// e.ns, not ns: an outage replaces the server (see restartNATS).
	t.Cleanup(func() {
		e.ns.Shutdown()
		e.ns.WaitForShutdown()
	})
	// Reconnecting for ever and quickly, so that checks made after an
	// outage see the server as soon as it is back.
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e.js, e.ctx = js, ctx
	return e
}

// nodeOpt adjusts a node's configuration.
type nodeOpt func(*stack.Config)

func withDelay(d time.Duration) nodeOpt { return func(c *stack.Config) { c.AppDelay = d } }

func withDaprdArgs(args ...string) nodeOpt {
	return func(c *stack.Config) { c.DaprdArgs = append(c.DaprdArgs, args...) }
}

// newNode prepares a node of app appID (not started).
func (e *env) newNode(appID string, opts ...nodeOpt) *stack.Node {
	e.t.Helper()
	cfg := stack.Config{
		DaprdBin: daprdBins[e.version], ComponentBin: componentBin, AppBin: appBin,
		AppID: appID, NATSURL: e.ns.ClientURL(), Dir: e.t.TempDir(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := stack.NewNode(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.nodes++
	logDir := fmt.Sprintf("%d-%s", e.nodes, appID)
	e.t.Cleanup(func() {
		n.Close()
		if e.t.Failed() {
			e.t.Logf("logs of node %s (daprd %s):\n%s", appID, e.version, n.Logs(150))
		}
		if dir := os.Getenv("E2E_LOG_DIR"); dir != "" {
			sub := filepath.Join(dir, sanitize(e.t.Name()), logDir)
			_ = os.MkdirAll(sub, 0o755)
			for name, out := range n.FullLogs() {
				_ = os.WriteFile(filepath.Join(sub, name+".log"), []byte(out), 0o644)
			}
		}
	})
	return n
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func sanitize(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

// startNode starts a node and waits until its subscriptions are in place.
func (e *env) startNode(appID string, opts ...nodeOpt) *stack.Node {
	e.t.Helper()
	n, err := e.tryStartNode(e.newNode(appID, opts...))
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// startNodeAsync is startNode for other goroutines: it reports a failure
// with t.Error and returns nil.
func (e *env) startNodeAsync(n *stack.Node) *stack.Node {
	n, err := e.tryStartNode(n)
	if err != nil {
		e.t.Error(err)
		return nil
	}
	return n
}

func (e *env) tryStartNode(n *stack.Node) (*stack.Node, error) {
	start := time.Now()
	if err := n.Start(e.ctx); err != nil {
		return nil, fmt.Errorf("start node %s: %w", n.AppID, err)
	}
	if err := n.WaitSubscribed(e.ctx, e.js); err != nil {
		return nil, fmt.Errorf("node %s: %w", n.AppID, err)
	}
	e.t.Logf("node %s ready in %s (daprd %s)", n.AppID, time.Since(start).Round(time.Millisecond), e.version)
	return n, nil
}

// tag makes texts unique per scenario and version.
func tag(t *testing.T) string {
	return fmt.Sprintf("%s-%d", sanitize(t.Name()), time.Now().UnixNano()%1e9)
}

// waitUntil polls cond until it returns "" or timeout passes, then fails the
// test with cond's last message.
func waitUntil(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	err := natstest.Await(timeout, 100*time.Millisecond, nil, func() error {
		if msg := cond(); msg != "" {
			return errors.New(msg)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// received fetches the app's records, failing the test on error.
func received(t *testing.T, n *stack.Node) stack.Received {
	t.Helper()
	r, err := n.Received(context.Background())
	if err != nil {
		t.Fatalf("GET /received of %s: %v", n.AppID, err)
	}
	return r
}

// filter returns the records on topic that keep accepts.
func filter(recs []stack.Record, topic string, keep func(stack.Record) bool) []stack.Record {
	var out []stack.Record
	for _, r := range recs {
		if r.Topic == topic && keep(r) {
			out = append(out, r)
		}
	}
	return out
}
