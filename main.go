// Command dapr-nats-jetstream serves NATS JetStream to daprd as the pluggable
// pub/sub component pubsub.<socket-name>.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/dapr/kit/logger"

	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

func main() {
	socketFolder := env("DAPR_COMPONENTS_SOCKETS_FOLDER", pluggable.DefaultSocketFolder)
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	fs.StringVar(&socketFolder, "socket-folder", socketFolder, "folder daprd scans for component sockets (env DAPR_COMPONENTS_SOCKETS_FOLDER)")
	name := fs.String("socket-name", env("JETSTREAM_SOCKET_NAME", pluggable.DefaultSocketName), "socket file name without .sock; the component type becomes pubsub.<name> (env JETSTREAM_SOCKET_NAME)")
	mode := fs.String("socket-mode", env("JETSTREAM_SOCKET_MODE", "0660"), "socket permission bits, 0660 or stricter (env JETSTREAM_SOCKET_MODE)")
	drain := fs.Duration("drain-timeout", pluggable.DefaultDrainTimeout, "on SIGTERM, how long to wait for daprd to acknowledge in-flight messages")
	level := fs.String("log-level", env("JETSTREAM_LOG_LEVEL", "info"), "debug, info, warn or error (env JETSTREAM_LOG_LEVEL)")
	_ = fs.Parse(os.Args[1:])

	log := logger.NewLogger("nats-jetstream")
	log.SetOutputLevel(logger.LogLevel(*level))
	perm, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid -socket-mode %q: use octal such as 0660\n", *mode)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = pluggable.Run(ctx, pluggable.Options{
		SocketFolder: socketFolder,
		SocketName:   *name,
		SocketMode:   os.FileMode(perm),
		DrainTimeout: *drain,
		Logger:       log,
	})
	if err != nil {
		log.Error(err.Error())
		os.Exit(1)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
