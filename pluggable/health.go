package pluggable

import (
	"context"
	"fmt"
	"slices"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

// Check asks the component on socket what daprd's discovery asks: whether it
// serves dapr.proto.components.v1.PubSub, through gRPC reflection. With
// nats, it also pings every instance, which fails while NATS is unreachable.
func Check(ctx context.Context, socket string, nats bool) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", socket, err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		return fmt.Errorf("%s: %w", socket, err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("%s: %w", socket, err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !slices.Contains(names, proto.PubSub_ServiceDesc.ServiceName) {
		return fmt.Errorf("%s does not serve %s (it serves %v)", socket, proto.PubSub_ServiceDesc.ServiceName, names)
	}
	if nats {
		if _, err := proto.NewPubSubClient(conn).Ping(ctx, &proto.PingRequest{}); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
	return nil
}
