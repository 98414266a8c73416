package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc"
)

// ceilingWindow is how many messages the stream ceiling keeps unacknowledged,
// as the component does by default (maxInFlight 100).
const ceilingWindow = 100

// streamCeiling is a PullMessages server that does nothing but send: each
// subscription gets the number of 128 B messages named by its "count"
// metadata, with no metadata of their own, at most ceilingWindow
// unacknowledged. Read by daprd's client, it is the fastest any pluggable
// component can deliver on this machine: the gRPC stream hop alone.
type streamCeiling struct {
	proto.UnimplementedPubSubServer
}

func (streamCeiling) Init(context.Context, *proto.PubSubInitRequest) (*proto.PubSubInitResponse, error) {
	return &proto.PubSubInitResponse{}, nil
}

func (streamCeiling) Features(context.Context, *proto.FeaturesRequest) (*proto.FeaturesResponse, error) {
	return &proto.FeaturesResponse{}, nil
}

func (streamCeiling) Ping(context.Context, *proto.PingRequest) (*proto.PingResponse, error) {
	return &proto.PingResponse{}, nil
}

func (streamCeiling) PullMessages(stream proto.PubSub_PullMessagesServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(first.GetTopic().GetMetadata()["count"])
	if err != nil {
		return fmt.Errorf("count: %w", err)
	}
	window := make(chan struct{}, ceilingWindow)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
			<-window
		}
	}()
	data := make([]byte, smallMsg)
	topic := first.GetTopic().GetName()
	for i := range n {
		select {
		case window <- struct{}{}:
		case <-stream.Context().Done():
			return nil
		}
		err := stream.Send(&proto.PullMessagesResponse{Data: data, TopicName: topic, Id: strconv.FormatUint(uint64(i), 36)})
		if err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

// serveCeiling serves streamCeiling on nats-jetstream.sock in
// DAPR_COMPONENTS_SOCKETS_FOLDER until SIGTERM.
func serveCeiling() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	l, err := net.Listen("unix", filepath.Join(os.Getenv("DAPR_COMPONENTS_SOCKETS_FOLDER"), "nats-jetstream.sock"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gs := grpc.NewServer()
	proto.RegisterPubSubServer(gs, streamCeiling{})
	go func() { <-ctx.Done(); gs.Stop() }()
	if err := gs.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
