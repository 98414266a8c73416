package jetstream

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dapr/components-contrib/pubsub"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An in-process user reads the same gRPC code from an error as daprd reads
// from the socket (pluggable's tests pin those codes), so that Dapr's retry
// matching treats both alike.
func TestErrorGRPCStatus(t *testing.T) {
	cause := errors.New("cause")
	for _, c := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"invalid", &Error{Op: "publish to", Topic: "t", Kind: KindInvalid, Err: cause}, codes.InvalidArgument},
		{"rejected", &Error{Op: "publish to", Topic: "t", Kind: KindRejected, Err: cause}, codes.FailedPrecondition},
		{"unavailable", &Error{Op: "publish to", Topic: "t", Kind: KindUnavailable, Err: cause}, codes.Unavailable},
		{"deadline", &Error{Op: "publish to", Topic: "t", Kind: KindUnavailable, Err: fmt.Errorf("waiting: %w", context.DeadlineExceeded)}, codes.DeadlineExceeded},
		{"canceled", &Error{Op: "publish to", Topic: "t", Kind: KindInvalid, Err: context.Canceled}, codes.Canceled},
		{"wrapped", fmt.Errorf("bulk publish: %w", &Error{Op: "publish to", Topic: "t", Kind: KindRejected, Err: cause}), codes.FailedPrecondition},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, ok := status.FromError(c.err)
			require.True(t, ok, "status.FromError finds no status in %v", c.err)
			assert.Equal(t, c.want, st.Code())
			assert.Equal(t, c.err.Error(), st.Message(), "the status keeps the error's message")
		})
	}
}

func TestInProcessErrorsCarryGRPCCode(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, _ := open(t, ns.ClientURL(), map[string]string{"autoProvision": "false"})

	err := ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "missing", Data: []byte("x")})
	require.Error(t, err)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err), "no stream covers the topic: %v", err)

	err = ps.Publish(ctx(t), &pubsub.PublishRequest{Topic: "missing", Data: []byte("x"), Metadata: map[string]string{"bad header": "x"}})
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "bad metadata: %v", err)

	_, err = ps.BulkPublish(ctx(t), &pubsub.BulkPublishRequest{Topic: "missing", Entries: []pubsub.BulkMessageEntry{
		{EntryId: "e0", Event: []byte("x"), ContentType: "text/plain", Metadata: map[string]string{"bad header": "x"}},
	}})
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, status.Code(err), "bulk publish with a bad entry: %v", err)
}

func TestKindString(t *testing.T) {
	assert.Equal(t, "unavailable", KindUnavailable.String())
	assert.Equal(t, "invalid", KindInvalid.String())
	assert.Equal(t, "rejected", KindRejected.String())
	assert.Equal(t, "Kind(7)", Kind(7).String())
	assert.Equal(t, "kind rejected", fmt.Sprintf("kind %v", KindRejected), "fmt prints a Kind by its name")
}
