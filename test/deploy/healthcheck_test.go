package deploy

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// TestHealthcheckSubcommand runs the probes of deploy/ for real: the binary's
// healthcheck subcommand against a running binary. It is skipped until
// main.go has the subcommand.
func TestHealthcheckSubcommand(t *testing.T) {
	if !strings.Contains(string(readFile(t, "main.go")), `"healthcheck"`) {
		t.Skip("main.go has no healthcheck subcommand yet; the probes and the postStart hook in deploy/ call it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := natstest.MustBuild(t, natstest.ComponentPackage)
	// Unix socket paths are limited to about 100 bytes: keep it short.
	folder, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(folder)
	environ := []string{"PATH=" + os.Getenv("PATH"), "DAPR_COMPONENTS_SOCKETS_FOLDER=" + folder}
	check := func(args ...string) error {
		cmd := exec.CommandContext(ctx, bin, append([]string{"healthcheck"}, args...)...)
		cmd.Env = environ
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Logf("healthcheck %v: %v: %s", args, err, out)
		}
		return err
	}

	if err := check("-timeout=1s"); err == nil {
		t.Error("healthcheck succeeded with no server")
	}
	// -wait, as in the postStart hook, waits for a server that starts later.
	waited := make(chan error, 1)
	go func() { waited <- check("-wait=20s") }()
	// Not a wait for a condition: the window in which no server exists, so
	// that the healthcheck fails at least once (it retries every 200ms) and
	// succeeds only by waiting. Nothing outside the process shows a failed try.
	time.Sleep(300 * time.Millisecond)

	srv := exec.CommandContext(ctx, bin)
	srv.Env = environ
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}()
	if err := <-waited; err != nil {
		t.Errorf("healthcheck -wait=20s: %v", err)
	}
	// The probes: liveness and startup, readiness (-nats: no component is
	// initialised, so there is no NATS connection to fail), and the socket
	// given by flags instead of the environment.
	for _, args := range [][]string{{}, {"-nats"}, {"-socket-folder=" + folder, "-socket-name=nats-jetstream"}} {
		if err := check(args...); err != nil {
			t.Errorf("healthcheck %v against a running server: %v", args, err)
		}
	}
	if err := check("-socket-name=other", "-timeout=1s"); err == nil {
		t.Error("healthcheck of a socket nobody serves succeeded")
	}
}
