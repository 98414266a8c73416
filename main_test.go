package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// TestSIGTERMDrains runs the real binary: on SIGTERM it stops delivering,
// lets daprd acknowledge what it holds within the drain bound, gives the
// rest back to JetStream, removes its socket and exits 0.
func TestSIGTERMDrains(t *testing.T) {
	ns := natstest.Start(t)
	_, js := natstest.Client(t, ns)
	sockets := t.TempDir()
	socket := filepath.Join(sockets, "nats-js-test.sock")
	p := startBinary(t, sockets, socket, "-drain-timeout", "3s", "-socket-name", "nats-js-test")

	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := proto.NewPubSubClient(conn)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "x-component-instance", "pubsub")
	_, err = client.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: map[string]string{
		"natsURL": ns.ClientURL(), "consumerID": "app",
	}}})
	require.NoError(t, err)
	stream, err := client.PullMessages(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "drain"}}))
	// The consumer starts at the subscription: publish once it exists.
	natstest.AwaitT(t, 10*time.Second, "the subscription's consumer", func() error {
		_, err := js.Consumer(context.Background(), "drain", "app-drain")
		return err
	})
	for i := range 3 {
		_, err := client.Publish(ctx, &proto.PublishRequest{Topic: "drain", Data: fmt.Appendf(nil, "d%d", i)})
		require.NoError(t, err)
	}
	var held []*proto.PullMessagesResponse
	for range 3 {
		m, err := stream.Recv()
		require.NoError(t, err)
		held = append(held, m)
	}

	start := time.Now()
	require.NoError(t, p.Signal(syscall.SIGTERM))
	// daprd finishes one message during the drain window; its ack still lands.
	_, err = p.WaitForOutput(10*time.Second, regexp.MustCompile("shutting down: pausing delivery"))
	require.NoError(t, err, "the drain did not begin")
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: held[0].GetId()}))

	exited, err := p.Wait(20 * time.Second)
	require.True(t, exited, "did not exit within 20s")
	require.NoError(t, err, "exit status 0")
	elapsed := time.Since(start)
	assert.Less(t, elapsed, 10*time.Second, "bounded by the drain timeout")
	_, err = os.Stat(socket)
	assert.True(t, errors.Is(err, os.ErrNotExist), "socket removed")

	// The two unacknowledged messages are back in JetStream at once; the
	// acknowledged one is not.
	cons, err := js.Consumer(context.Background(), "drain", "app-drain")
	require.NoError(t, err)
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(3*time.Second))
	require.NoError(t, err)
	var got []string
	for m := range batch.Messages() {
		got = append(got, string(m.Data()))
		require.NoError(t, m.Ack())
	}
	assert.ElementsMatch(t, []string{string(held[1].GetData()), string(held[2].GetData())}, got)
}

// startBinary starts the component binary with its sockets in folder and
// waits until socket exists; the process is killed when the test ends.
func startBinary(t *testing.T, folder, socket string, args ...string) *natstest.Proc {
	t.Helper()
	return startBinaryEnv(t, []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + folder}, socket, args...)
}

// startBinaryEnv is startBinary with the whole added environment given.
func startBinaryEnv(t *testing.T, env []string, socket string, args ...string) *natstest.Proc {
	t.Helper()
	p := natstest.NewProc(natstest.Spec{
		Name: "component", Bin: natstest.MustBuild(t, natstest.ComponentPackage), Args: args, Env: env,
	})
	p.StartT(t)
	require.NoError(t, p.WaitFor(20*time.Second, 50*time.Millisecond, func() error {
		_, err := os.Stat(socket)
		return err
	}))
	return p
}
