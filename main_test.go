package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// buildBinary builds the component once for the tests of this package.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dapr-nats-jetstream-bin")
		if err != nil {
			buildErr = err
			return
		}
		built = filepath.Join(dir, "dapr-nats-jetstream")
		build := exec.Command("go", "build", "-o", built, ".")
		build.Stderr = os.Stderr
		buildErr = build.Run()
	})
	require.NoError(t, buildErr)
	return built
}

// TestSIGTERMDrains runs the real binary: on SIGTERM it stops delivering,
// lets daprd acknowledge what it holds within the drain bound, gives the
// rest back to JetStream, removes its socket and exits 0.
func TestSIGTERMDrains(t *testing.T) {
	ns := natstest.Start(t)
	bin := buildBinary(t)

	sockets := t.TempDir()
	cmd := exec.Command(bin, "-drain-timeout", "3s", "-socket-name", "nats-js-test")
	cmd.Env = append(os.Environ(), "DAPR_COMPONENTS_SOCKETS_FOLDER="+sockets)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	socket := filepath.Join(sockets, "nats-js-test.sock")
	require.Eventually(t, func() bool { _, err := os.Stat(socket); return err == nil }, 20*time.Second, 50*time.Millisecond)

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
	time.Sleep(300 * time.Millisecond)
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
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	// daprd finishes one message during the drain window; its ack still lands.
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: held[0].GetId()}))

	select {
	case err := <-exited:
		require.NoError(t, err, "exit status 0")
	case <-time.After(20 * time.Second):
		t.Fatal("did not exit within 20s")
	}
	elapsed := time.Since(start)
	assert.Less(t, elapsed, 10*time.Second, "bounded by the drain timeout")
	_, err = os.Stat(socket)
	assert.True(t, errors.Is(err, os.ErrNotExist), "socket removed")

	// The two unacknowledged messages are back in JetStream at once; the
	// acknowledged one is not.
	_, js := natstest.Client(t, ns)
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
