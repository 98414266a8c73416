// Package conformance runs Dapr's own pub/sub conformance suite
// (components-contrib/tests/conformance/pubsub) against this component,
// in-process and over the gRPC wire through daprd's client.
package conformance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	daprpubsub "github.com/dapr/dapr/pkg/components/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	conf "github.com/dapr/components-contrib/tests/conformance/pubsub"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	js "github.com/dapr-nats/jetstream-pubsub/jetstream"
)

// suiteConfig is the suite's configuration with its default timings. The
// suite's own topics are plain names, so streams are made per topic.
func suiteConfig(t *testing.T, name string, operations []string, inOrder bool) conf.TestConfig {
	t.Helper()
	cfg, err := conf.NewTestConfig(name, operations, map[string]any{
		// In-process, one handler runs at a time in stream order.
		// Over the wire, daprd 1.18's client handles a subscription's
		// messages one at a time in the order the stream sends them, and
		// the component sends them in JetStream order, so the order holds
		// there too.
		"checkInOrderProcessing": inOrder,
	})
	require.NoError(t, err)
	return cfg
}

// props is the component metadata: consumerID is what daprd would inject.
func props(ns *server.Server, autoProvision bool) map[string]string {
	p := map[string]string{
		"natsURL":       ns.ClientURL(),
		"consumerID":    "conformance",
		"reconnectWait": "200ms",
		"ackWait":       "10s",
	}
	if !autoProvision {
		p["autoProvision"] = "false"
		p["streamName"] = "CONFORMANCE"
	}
	return p
}

// preCreate makes the one stream that holds every topic of the suite, for
// the configuration with auto-provisioning off.
func preCreate(t *testing.T, ns *server.Server) {
	t.Helper()
	_, jsc := natstest.Client(t, ns)
	_, err := jsc.CreateStream(context.Background(), jetstream.StreamConfig{
		Name:     "CONFORMANCE",
		Subjects: []string{"testTopic", "testTopicBulk", "multiTopic1", "multiTopic2"},
	})
	require.NoError(t, err)
}

func TestInProcess(t *testing.T) {
	for _, tc := range []struct {
		name          string
		autoProvision bool
	}{{"autoProvision", true}, {"preCreatedStream", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := natstest.Start(t)
			if !tc.autoProvision {
				preCreate(t, ns)
			}
			cfg := suiteConfig(t, "nats-jetstream", []string{"bulkpublish", "bulksubscribe"}, true)
			conf.ConformanceTests(t, props(ns, tc.autoProvision), js.NewPubSub(logger.NewLogger("conformance")), cfg)
		})
	}
}

// TestOverTheWire runs the built binary and drives it through its Unix
// socket with daprd's own pluggable pub/sub client. daprd's client does not
// bulk-subscribe (daprd wraps plain subscriptions for that), so only bulk
// publish is on.
func TestOverTheWire(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		name          string
		autoProvision bool
	}{{"autoProvision", true}, {"preCreatedStream", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := natstest.Start(t)
			if !tc.autoProvision {
				preCreate(t, ns)
			}
			socket := startBinary(t, bin)
			cfg := suiteConfig(t, "nats-jetstream", []string{"bulkpublish"}, true)
			l := logger.NewLogger("conformance-client")
			conf.ConformanceTests(t, props(ns, tc.autoProvision), daprpubsub.NewGRPCPubSub(l, socket), cfg)
		})
	}
}

func buildBinary(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(t.TempDir(), "dapr-nats-jetstream")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Run())
	return bin
}

func startBinary(t *testing.T, bin string) string {
	t.Helper()
	folder := t.TempDir()
	cmd := exec.Command(bin, "-log-level", "warn")
	cmd.Env = append(os.Environ(), "DAPR_COMPONENTS_SOCKETS_FOLDER="+folder)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("component exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("component did not exit within 30s of SIGINT")
		}
	})
	socket := filepath.Join(folder, "nats-jetstream.sock")
	require.Eventually(t, func() bool { _, err := os.Stat(socket); return err == nil }, 20*time.Second, 50*time.Millisecond)
	return socket
}
