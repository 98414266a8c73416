// Package natstest is the test kit: a real nats-server with JetStream inside
// a test (Start, Client), child processes (Proc), binaries built once
// (BuildBinary), and bounded waits (Recv, Nothing, Await). The bench
// program, which is no test, uses it too.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Start runs nats-server with JetStream on a random loopback port and a
// temporary store, and stops it when the test ends. Options may adjust the
// server configuration before it starts.
func Start(t testing.TB, opts ...func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	for _, opt := range opts {
		opt(o)
	}
	ns := Run(t, o)
	t.Cleanup(func() { Stop(ns) })
	return ns
}

// Run starts a server with exactly these options.
func Run(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	ns.SetLogger(attachServerLog(t), false, false)
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start within 10s")
	}
	return ns
}

// Stop shuts a server down and waits until it has stopped.
func Stop(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

// Client connects a plain nats.go client, for checking what the component did.
func Client(t testing.TB, ns *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return nc, js
}

// WaitConsumer waits until the consumer name exists on stream: a consumer
// starts at its subscription, so only what is published after this reaches
// the subscriber for certain.
func WaitConsumer(t testing.TB, js jetstream.JetStream, stream, name string) {
	t.Helper()
	AwaitT(t, 10*time.Second, "consumer "+name+" on stream "+stream, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js.Consumer(ctx, stream, name)
		return err
	})
}
