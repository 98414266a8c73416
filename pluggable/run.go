package pluggable

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/dapr/kit/logger"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	"github.com/dapr-nats/jetstream-pubsub/metrics"
)

// Defaults of Options.
const (
	DefaultSocketFolder = "/tmp/dapr-components-sockets"
	DefaultSocketName   = "nats-jetstream"
	DefaultSocketMode   = os.FileMode(0o660)
	DefaultDrainTimeout = 10 * time.Second
)

// Options configure Run.
type Options struct {
	// SocketFolder is where daprd looks for sockets
	// (DAPR_COMPONENTS_SOCKETS_FOLDER).
	SocketFolder string
	// SocketName makes the socket <SocketName>.sock and the component type
	// pubsub.<SocketName>.
	SocketName string
	// SocketMode is the socket's permission bits; never world-accessible.
	SocketMode os.FileMode
	// DrainTimeout bounds how long shutdown waits for daprd to acknowledge
	// messages it already has.
	DrainTimeout time.Duration
	Logger       logger.Logger
	// Ready, if set, is called with the socket path once it accepts calls.
	Ready func(path string)
	// Metrics, if set, records what the instances do.
	Metrics *metrics.Metrics
}

func (o *Options) defaults() error {
	if o.SocketFolder == "" {
		o.SocketFolder = DefaultSocketFolder
	}
	if o.SocketName == "" {
		o.SocketName = DefaultSocketName
	}
	if o.SocketMode == 0 {
		o.SocketMode = DefaultSocketMode
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Logger == nil {
		o.Logger = logger.NewLogger("nats-jetstream")
	}
	switch {
	case strings.EqualFold(o.SocketName, "jetstream"):
		return errors.New("socket name \"jetstream\" would replace Dapr's built-in pubsub.jetstream; choose another, such as nats-jetstream")
	case strings.ContainsAny(o.SocketName, `/\`) || strings.HasPrefix(o.SocketName, "."):
		return fmt.Errorf("socket name %q must be a plain file name without slashes or a leading dot", o.SocketName)
	case o.SocketMode&0o007 != 0 || o.SocketMode&^os.ModePerm != 0:
		return fmt.Errorf("socket mode %#o gives access to every user; use 0660 or stricter", o.SocketMode)
	}
	return nil
}

// Listen creates the socket: it makes the folder, removes a stale socket left
// by a previous run (but refuses to remove anything else, or a socket that is
// still served), and sets the socket's mode.
func Listen(o Options) (net.Listener, string, error) {
	if err := o.defaults(); err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(o.SocketFolder, 0o750); err != nil {
		return nil, "", fmt.Errorf("create socket folder: %w", err)
	}
	path := filepath.Join(o.SocketFolder, o.SocketName+".sock")
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, "", fmt.Errorf("%s exists and is not a socket; refusing to remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
			_ = c.Close()
			return nil, "", fmt.Errorf("%s is served by another process; stop it or choose another socket name", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, "", fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Create the socket with no access for group and others, then open it up
	// to the configured mode, so that it is never wider even for an instant.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, o.SocketMode); err != nil {
		_ = l.Close()
		return nil, "", fmt.Errorf("set socket mode: %w", err)
	}
	return l, path, nil
}

// Run serves the component until ctx is done, then shuts down gracefully:
// no new subscriptions, delivery paused, in-flight messages acknowledged or
// given back within DrainTimeout, NATS drained, socket removed.
func Run(ctx context.Context, o Options) error {
	if err := o.defaults(); err != nil {
		return err
	}
	l, path, err := Listen(o)
	if err != nil {
		return err
	}
	defer os.Remove(path)

	srv := NewServer(o.Logger)
	if o.Metrics != nil {
		srv.UseMetrics(o.Metrics)
	}
	// Stream workers run unary RPCs on long-lived goroutines whose stacks have
	// already grown; without them every call starts a goroutine and copies
	// its stack as it grows (about 13% of the component's CPU when publishing).
	// When all workers are busy, gRPC starts a goroutine as before.
	// The codec encodes and decodes the messages of the hot path without
	// protobuf's reflection (see codec).
	// A request may be as large as daprd sends it: daprd limits what it takes
	// (--max-body-size) and its client sends without a limit, so gRPC's
	// default 4 MiB would refuse a BulkPublish of entries that each fit
	// NATS's max_payload, as ResourceExhausted, before any entry is read.
	gs := grpc.NewServer(grpc.NumStreamWorkers(64), grpc.ForceServerCodecV2(newCodec()), grpc.MaxRecvMsgSize(math.MaxInt32))
	proto.RegisterPubSubServer(gs, srv)
	reflection.Register(gs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(&peerListener{Listener: l, opened: srv.connOpened, closed: srv.connClosed}) }()
	o.Logger.Infof("serving component type pubsub.%s on %s", strings.ToLower(o.SocketName), path)
	if o.Ready != nil {
		o.Ready(path)
	}

	select {
	case err := <-served:
		srv.Shutdown(0)
		return fmt.Errorf("gRPC server stopped: %w", err)
	case <-ctx.Done():
	}
	o.Logger.Info("shutting down: pausing delivery and draining in-flight messages")
	stopBy := time.Now().Add(o.DrainTimeout + shutdownGrace)
	srv.Shutdown(o.DrainTimeout)

	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(time.Until(stopBy)):
		gs.Stop()
		<-stopped
	}
	o.Logger.Info("stopped")
	return nil
}
