package pluggable

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	daprpubsub "github.com/dapr/dapr/pkg/components/pubsub"
	"github.com/dapr/kit/logger"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// daprd's client starts these per connection and lets them end on their own.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("google.golang.org/grpc.(*addrConn).resetTransportAndUnlock"),
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/transport.(*controlBuffer).get"),
	)
}

var testLog = logger.NewLogger("test")

func init() { testLog.SetOutputLevel(logger.WarnLevel) }

// component is the gRPC server under test, on a socket in a temp folder.
type component struct {
	socket string
	stop   context.CancelFunc
	done   chan error
}

func startComponent(t *testing.T, name string) *component {
	t.Helper()
	return startComponentLogging(t, name, testLog)
}

// startComponentLogging is startComponent with its log going to l.
func startComponentLogging(t *testing.T, name string, l logger.Logger) *component {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	c := &component{stop: cancel, done: make(chan error, 1)}
	folder := t.TempDir()
	go func() {
		c.done <- Run(ctx, Options{
			SocketFolder: folder, SocketName: name, DrainTimeout: 2 * time.Second, Logger: l,
			Ready: func(p string) { ready <- p },
		})
	}()
	select {
	case c.socket = <-ready:
	case err := <-c.done:
		t.Fatalf("component did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("component did not start within 10s")
	}
	t.Cleanup(c.shutdown)
	return c
}

func (c *component) shutdown() {
	c.stop()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
	}
}

// daprClient is daprd's own pluggable pub/sub client, connected to c as
// the Component named instance.
func daprClient(t *testing.T, c *component, instance string, props map[string]string) pubsub.PubSub {
	t.Helper()
	cl := daprpubsub.NewGRPCPubSub(testLog, c.socket)
	err := cl.Init(context.Background(), pubsub.Metadata{Base: contribmd.Base{Name: instance, Properties: props}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// cloudEvent builds the JSON daprd publishes for data.
func cloudEvent(t *testing.T, topic string, data any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"specversion": "1.0", "id": uuid.NewString(), "source": "test", "type": "com.dapr.event.sent",
		"topic": topic, "pubsubname": "pubsub", "datacontenttype": "application/json", "data": data,
	})
	require.NoError(t, err)
	return b
}

// inbox collects delivered messages.
type inbox struct {
	mu   sync.Mutex
	msgs []*pubsub.NewMessage
	ch   chan struct{}
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 1)} }

func (b *inbox) handler(fail func(*pubsub.NewMessage) error) pubsub.Handler {
	return func(_ context.Context, m *pubsub.NewMessage) error {
		if fail != nil {
			if err := fail(m); err != nil {
				return err
			}
		}
		b.mu.Lock()
		b.msgs = append(b.msgs, m)
		b.mu.Unlock()
		select {
		case b.ch <- struct{}{}:
		default:
		}
		return nil
	}
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) all() []*pubsub.NewMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*pubsub.NewMessage(nil), b.msgs...)
}

// waitFor waits until the inbox holds at least n messages.
func (b *inbox) waitFor(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for b.len() < n {
		select {
		case <-b.ch:
		case <-deadline:
			t.Fatalf("received %d of %d messages within %s", b.len(), n, within)
		}
	}
}

func dataOf(t *testing.T, m *pubsub.NewMessage) string {
	t.Helper()
	var ce struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(m.Data, &ce) == nil && len(ce.Data) > 0 {
		var s string
		if json.Unmarshal(ce.Data, &s) == nil {
			return s
		}
		return string(ce.Data)
	}
	return string(m.Data)
}

func sockPath(dir, name string) string { return filepath.Join(dir, fmt.Sprintf("%s.sock", name)) }
