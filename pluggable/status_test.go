package pluggable

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

func TestToStatus(t *testing.T) {
	classified := &jetstream.Error{Op: "publish to", Topic: "t", Kind: jetstream.KindRejected, Err: jetstream.ErrNoStream}
	for _, c := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"classified", classified, codes.FailedPrecondition},
		{"wrapped", fmt.Errorf("bulk: %w", classified), codes.FailedPrecondition},
		{"status", status.Error(codes.NotFound, "kept"), codes.NotFound},
		{"closed", jetstream.ErrClosed, codes.Unavailable},
		{"bad metadata", fmt.Errorf("%w: x", metadata.ErrInvalid), codes.InvalidArgument},
		{"deadline", fmt.Errorf("ping: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled", context.Canceled, codes.Canceled},
		{"other", errors.New("other"), codes.Unavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := status.Convert(toStatus(c.err))
			assert.Equal(t, c.want, st.Code())
			assert.Equal(t, status.Convert(c.err).Message(), st.Message(), "the message is the error's")
		})
	}
	assert.NoError(t, toStatus(nil))
}
