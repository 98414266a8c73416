package pluggable

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/dapr/kit/logger"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
)

// syncBuffer is a log sink that the component's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The component logs a failed Init itself, naming the Component and the
// field, so that its own log explains what daprd reported.
func TestInitErrorIsLogged(t *testing.T) {
	var out syncBuffer
	l := logger.NewLogger("init-error-" + t.Name())
	l.SetOutput(&out)
	c := startComponentLogging(t, "nats-jetstream", l)
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), InstanceHeader, "orders-pubsub")
	_, err = proto.NewPubSubClient(conn).Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: map[string]string{
		"natsURL": "nats://127.0.0.1:1", "maxInFlight": "many", "password": "s3cret", "user": "alice",
	}}})
	require.Error(t, err)
	logged := out.String()
	var line string
	for _, l := range strings.Split(logged, "\n") {
		if strings.Contains(l, "orders-pubsub") && strings.Contains(l, "maxInFlight") {
			line = l
		}
	}
	require.NotEmpty(t, line, "no log line names the Component and the field; the log:\n%s", logged)
	require.Contains(t, line, "level=error")
	require.NotContains(t, logged, "s3cret")
}
