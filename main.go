// Command dapr-nats-jetstream serves NATS JetStream to daprd as the pluggable
// pub/sub component pubsub.<socket-name>.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/dapr/kit/logger"

	"github.com/dapr-nats/jetstream-pubsub/metrics"
	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(os.Args[2:]))
	}
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	socketFolder, name := socketFlags(fs)
	mode := fs.String("socket-mode", env("JETSTREAM_SOCKET_MODE", "0660"), "socket permission bits, 0660 or stricter (env JETSTREAM_SOCKET_MODE)")
	drain := fs.Duration("drain-timeout", pluggable.DefaultDrainTimeout, "on SIGTERM, how long to wait for daprd to acknowledge in-flight messages")
	level := fs.String("log-level", env("JETSTREAM_LOG_LEVEL", "info"), "debug, info, warn or error (env JETSTREAM_LOG_LEVEL)")
	asJSON := fs.Bool("log-as-json", env("JETSTREAM_LOG_AS_JSON", "false") == "true", "log in JSON, as daprd's --log-as-json does (env JETSTREAM_LOG_AS_JSON=true)")
	metricsAddr := fs.String("metrics-addr", env("JETSTREAM_METRICS_ADDR", ""), "serve Prometheus metrics, /healthz and /readyz on this address, such as :9095; off when empty (env JETSTREAM_METRICS_ADDR)")
	_ = fs.Parse(os.Args[1:])

	log := logger.NewLogger("nats-jetstream")
	log.SetOutputLevel(logger.LogLevel(*level))
	log.EnableJSONOutput(*asJSON)
	perm, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil {
		fmt.Fprintf(os.Stderr, "invalid -socket-mode %q: use octal such as 0660\n", *mode)
		os.Exit(2)
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		stop()
		// The drain can take long when NATS or daprd does not answer: a
		// second signal is someone who will not wait for it.
		sig := <-signals
		log.Warnf("received %s during the drain: exiting at once; what daprd had not acknowledged goes back to JetStream after its ackWait", sig)
		os.Exit(1)
	}()
	var m *metrics.Metrics
	if *metricsAddr != "" {
		m = metrics.New()
		// Served until the process exits, not only until SIGTERM: the drain
		// and what it gives back stay visible.
		go func() {
			if err := m.Serve(context.Background(), *metricsAddr); err != nil {
				log.Errorf("metrics: %v", err)
			}
		}()
		log.Infof("serving metrics, /healthz and /readyz on %s", *metricsAddr)
	}
	err = pluggable.Run(ctx, pluggable.Options{
		Metrics:      m,
		SocketFolder: *socketFolder,
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

// socketFlags are the flags that locate the socket, shared by the server and
// the healthcheck.
func socketFlags(fs *flag.FlagSet) (folder, name *string) {
	// The plural is what daprd reads; Dapr's injector sets the singular
	// when a pod chooses its own folder.
	def := env("DAPR_COMPONENTS_SOCKETS_FOLDER", env("DAPR_COMPONENT_SOCKETS_FOLDER", pluggable.DefaultSocketFolder))
	folder = fs.String("socket-folder", def, "folder daprd scans for component sockets (env DAPR_COMPONENTS_SOCKETS_FOLDER)")
	name = fs.String("socket-name", env("JETSTREAM_SOCKET_NAME", pluggable.DefaultSocketName), "socket file name without .sock; the component type becomes pubsub.<name> (env JETSTREAM_SOCKET_NAME)")
	return folder, name
}

// healthcheck exits 0 when the component serves its socket (and, with
// -nats, when every instance reaches NATS); for probes in a container with no
// shell. With -wait it retries until then.
func healthcheck(args []string) int {
	fs := flag.NewFlagSet("healthcheck", flag.ExitOnError)
	folder, name := socketFlags(fs)
	timeout := fs.Duration("timeout", 2*time.Second, "how long one check may take")
	wait := fs.Duration("wait", 0, "keep retrying every 200ms for this long")
	withNATS := fs.Bool("nats", false, "also ping NATS through the component")
	_ = fs.Parse(args)
	socket := filepath.Join(*folder, *name+".sock")
	deadline := time.Now().Add(*wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err := pluggable.Check(ctx, socket, *withNATS)
		cancel()
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "unhealthy: %v\n", err)
			return 1
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
