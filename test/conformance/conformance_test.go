// Package conformance runs Dapr's own pub/sub conformance suite
// (components-contrib/tests/conformance/pubsub) against this component,
// in-process and over the gRPC wire through daprd's client.
package conformance

import (
	"context"
	"os"
	"path/filepath"
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
	bin := natstest.MustBuild(t, natstest.ComponentPackage)
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

func startBinary(t *testing.T, bin string) string {
	t.Helper()
	folder := t.TempDir()
	p := natstest.NewProc(natstest.Spec{
		Name: "component", Bin: bin, Args: []string{"-log-level", "warn"}, Echo: os.Stderr,
		Env: []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + folder},
	})
	require.NoError(t, p.Start())
	t.Cleanup(func() { stopBinary(t, p) })
	socket := filepath.Join(folder, "nats-jetstream.sock")
	require.NoError(t, p.WaitFor(20*time.Second, 50*time.Millisecond, func() error {
		_, err := os.Stat(socket)
		return err
	}))
	return socket
}

// stopBinary interrupts the component and expects a clean exit within 30s.
func stopBinary(t *testing.T, p *natstest.Proc) {
	_ = p.Signal(os.Interrupt)
	exited, err := p.Wait(30 * time.Second)
	switch {
	case !exited:
		p.Kill()
		t.Error("component did not exit within 30s of SIGINT")
	case err != nil:
		t.Errorf("component exited with %v", err)
	}
}
