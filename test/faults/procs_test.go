//go:build faults

package faults

// Helpers that run nats-server and the component as real binaries (built
// once per test binary by natstest) in child processes that a test can
// kill -9, SIGTERM and restart. Every child's output goes to logSink.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// procKeep is how much of a child's output a failing test shows.
const procKeep = 16 << 10

// procLogger is newLogger(name), also kept for the failure report. Logger
// names are global in dapr/kit, so name must be unique to the test.
func procLogger(t testing.TB, name string) logger.Logger {
	l := newLogger(name)
	out := natstest.NewOutput("logger "+name, procKeep, logSink)
	l.SetOutput(out)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- last output of logger %s ---\n%s", name, out.String())
		}
	})
	return l
}

// procNew prepares, without starting, a child process that is killed when t
// ends and shows its output if t failed.
func procNew(t testing.TB, name, bin string, args ...string) *natstest.Proc {
	p := natstest.NewProc(natstest.Spec{Name: name, Bin: bin, Args: args, Echo: logSink, Keep: procKeep})
	p.CleanupT(t)
	return p
}

// procStart starts p, failing t if it cannot.
func procStart(t testing.TB, p *natstest.Proc) {
	t.Helper()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
}

// procNATS is a nats-server process on a fixed loopback port.
type procNATS struct {
	*natstest.Proc
	port int
}

// procStartNATS runs nats-server with JetStream on a new loopback port, with
// the given extra arguments (such as -sd <dir>), and waits until JetStream
// answers.
func procStartNATS(t testing.TB, name string, extra ...string) *procNATS {
	t.Helper()
	n := procNewNATS(t, name, natstest.FreePortT(t), extra...)
	procStart(t, n.Proc)
	n.waitReady(t, 30*time.Second)
	return n
}

// procNewNATS prepares, without starting, nats-server on port.
func procNewNATS(t testing.TB, name string, port int, extra ...string) *procNATS {
	t.Helper()
	args := append([]string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port)}, extra...)
	return &procNATS{Proc: procNew(t, name, natstest.MustBuild(t, natstest.NATSServerPackage), args...), port: port}
}

// procNewNATSConfig prepares, without starting, nats-server with a config file.
func procNewNATSConfig(t testing.TB, name string, port int, config string) *procNATS {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".conf")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return &procNATS{Proc: procNew(t, name, natstest.MustBuild(t, natstest.NATSServerPackage), "-c", path), port: port}
}

func (n *procNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// waitReady waits until this server accepts connections and JetStream
// answers an account info request (in a cluster, that needs a meta leader).
func (n *procNATS) waitReady(t testing.TB, within time.Duration) {
	t.Helper()
	if err := n.WaitFor(within, 100*time.Millisecond, procJetStreamAnswers(n.url())); err != nil {
		t.Fatalf("JetStream at %s not ready: %v", n.url(), err)
	}
}

// procJetStreamAnswers is a condition: JetStream at url answers an account
// info request.
func procJetStreamAnswers(url string) func() error {
	return func() error {
		nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := natsjs.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	}
}

// procClient is a plain nats.go client for checking on the server.
func procClient(t testing.TB, url string) (*nats.Conn, natsjs.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// faultWaitConsumer waits until the durable of consumerID for topic exists:
// the consumer starts at the subscription, so only what is published after it
// exists reaches the subscriber for certain.
func faultWaitConsumer(t testing.TB, url, consumerID, topic string) {
	t.Helper()
	_, js := procClient(t, url)
	durable := metadata.SanitizeName(consumerID, topic)
	natstest.AwaitT(t, 10*time.Second, "consumer "+durable+" for "+topic, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		stream, err := js.StreamNameBySubject(ctx, topic)
		if err != nil {
			return err
		}
		_, err = js.Consumer(ctx, stream, durable)
		return err
	})
}

// procComponent is the component binary serving its socket.
type procComponent struct {
	*natstest.Proc
	socket string
}

// procNewComponent prepares, without starting, the component with its socket
// in folder, named sockName, and the given extra flags.
func procNewComponent(t testing.TB, folder, sockName string, extra ...string) *procComponent {
	t.Helper()
	args := append([]string{"-socket-folder", folder, "-socket-name", sockName, "-log-level", "debug"}, extra...)
	p := procNew(t, "component "+sockName, natstest.MustBuild(t, natstest.ComponentPackage), args...)
	return &procComponent{Proc: p, socket: filepath.Join(folder, sockName+".sock")}
}

// startServing starts the component and waits until its socket accepts
// connections.
func (c *procComponent) startServing(t testing.TB, within time.Duration) {
	t.Helper()
	procStart(t, c.Proc)
	if err := c.WaitFor(within, 50*time.Millisecond, natstest.Dials("unix", c.socket)); err != nil {
		t.Fatalf("%s did not serve %s: %v", c.Name, c.socket, err)
	}
}
