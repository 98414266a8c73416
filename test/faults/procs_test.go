//go:build faults

package faults

// Helpers that build nats-server and the component as real binaries, once per
// test binary, and run them as child processes that a test can kill -9,
// SIGTERM and restart. Every child's output goes to logSink.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

var (
	procDirOnce sync.Once
	procDir     string
	procDirErr  error

	procNATSOnce sync.Once
	procNATSBin  string
	procNATSErr  error

	procCompOnce sync.Once
	procCompBin  string
	procCompErr  error
)

// procBinDir is where the binaries go: next to the test binary when `go test`
// runs it from its work directory (which it removes afterwards), else a
// temporary directory of this run.
func procBinDir() (string, error) {
	procDirOnce.Do(func() {
		if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
			procDir, procDirErr = os.MkdirTemp(filepath.Dir(exe), "faultbin")
			if procDirErr == nil {
				return
			}
		}
		procDir, procDirErr = os.MkdirTemp("", "dapr-nats-faults-bin")
	})
	return procDir, procDirErr
}

// procRepoRoot is the module root (the directory holding go.mod).
func procRepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

func procGoBuild(out string, pkg string) error {
	root, err := procRepoRoot()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %v\n%s", out, pkg, err, buf.String())
	}
	return nil
}

// procNATSBinary builds nats-server (the version go.mod requires) once.
func procNATSBinary(t testing.TB) string {
	t.Helper()
	procNATSOnce.Do(func() {
		dir, err := procBinDir()
		if err != nil {
			procNATSErr = err
			return
		}
		procNATSBin = filepath.Join(dir, "nats-server")
		procNATSErr = procGoBuild(procNATSBin, "github.com/nats-io/nats-server/v2")
	})
	if procNATSErr != nil {
		t.Fatalf("build nats-server: %v", procNATSErr)
	}
	return procNATSBin
}

// procComponentBinary builds the component (the module's main package) once.
func procComponentBinary(t testing.TB) string {
	t.Helper()
	procCompOnce.Do(func() {
		dir, err := procBinDir()
		if err != nil {
			procCompErr = err
			return
		}
		procCompBin = filepath.Join(dir, "dapr-nats-jetstream")
		procCompErr = procGoBuild(procCompBin, ".")
	})
	if procCompErr != nil {
		t.Fatalf("build the component: %v", procCompErr)
	}
	return procCompBin
}

// procFreePort returns a loopback TCP port that nobody listened on a moment ago.
func procFreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// procTail keeps the last bytes a process or logger wrote, to show when its
// test fails, and passes everything on to logSink.
type procTail struct {
	mu  sync.Mutex
	buf []byte
}

const procTailMax = 16 << 10

func (w *procTail) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > 2*procTailMax {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-procTailMax:]...)
	}
	w.mu.Unlock()
	return logSink.Write(p)
}

func (w *procTail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if len(b) > procTailMax {
		b = b[len(b)-procTailMax:]
	}
	return string(b)
}

// procShowOnFailure logs what w kept if the test failed (or always, with
// FAULT_SHOW_LOGS=1).
func procShowOnFailure(t testing.TB, what string, w *procTail) {
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("FAULT_SHOW_LOGS") == "1" {
			t.Logf("--- last output of %s ---\n%s", what, w.String())
		}
	})
}

// procLogger is newLogger(name), also kept for the failure report. Logger
// names are global in dapr/kit, so name must be unique to the test.
func procLogger(t testing.TB, name string) logger.Logger {
	l := newLogger(name)
	tail := &procTail{}
	l.SetOutput(tail)
	procShowOnFailure(t, "logger "+name, tail)
	return l
}

// procProcess is a child process that can be started again with the same
// arguments after it was killed.
type procProcess struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string
	out  *procTail

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

func procNew(t testing.TB, name, bin string, args ...string) *procProcess {
	p := &procProcess{t: t, name: name, bin: bin, args: args, out: &procTail{}}
	procShowOnFailure(t, name, p.out)
	t.Cleanup(p.kill)
	return p
}

// start runs the process; it must not be running.
func (p *procProcess) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.exited:
		default:
			p.t.Fatalf("%s is already running", p.name)
		}
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(exited)
	}()
}

func (p *procProcess) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.exited
}

// signal sends sig to the running process.
func (p *procProcess) signal(sig syscall.Signal) error {
	cmd, exited := p.current()
	if cmd == nil {
		return errors.New("not started")
	}
	select {
	case <-exited:
		return errors.New("already exited")
	default:
	}
	return cmd.Process.Signal(sig)
}

// wait waits up to d for the process to exit and returns its exit error.
func (p *procProcess) wait(d time.Duration) (error, bool) {
	_, exited := p.current()
	if exited == nil {
		return nil, true
	}
	select {
	case <-exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waitErr, true
	case <-time.After(d):
		return nil, false
	}
}

// kill sends SIGKILL and waits until the process is gone; it does nothing
// if the process is not running.
func (p *procProcess) kill() {
	cmd, exited := p.current()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Kill()
	<-exited
}

// running reports whether the process was started and has not exited.
func (p *procProcess) running() bool {
	cmd, exited := p.current()
	if cmd == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// procNATS is a nats-server process on a fixed loopback port.
type procNATS struct {
	*procProcess
	port int
}

// procStartNATS runs nats-server with JetStream on a new loopback port, with
// the given extra arguments (such as -sd <dir>), and waits until JetStream
// answers.
func procStartNATS(t testing.TB, name string, extra ...string) *procNATS {
	t.Helper()
	n := procNewNATS(t, name, procFreePort(t), extra...)
	n.start()
	n.waitReady(t, 30*time.Second)
	return n
}

// procNewNATS prepares, without starting, nats-server on port.
func procNewNATS(t testing.TB, name string, port int, extra ...string) *procNATS {
	t.Helper()
	args := append([]string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port)}, extra...)
	return &procNATS{procProcess: procNew(t, name, procNATSBinary(t), args...), port: port}
}

// procNewNATSConfig prepares, without starting, nats-server with a config file.
func procNewNATSConfig(t testing.TB, name string, port int, config string) *procNATS {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".conf")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return &procNATS{procProcess: procNew(t, name, procNATSBinary(t), "-c", path), port: port}
}

func (n *procNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// waitReady waits until this server accepts connections and JetStream
// answers an account info request (in a cluster, that needs a meta leader).
func (n *procNATS) waitReady(t testing.TB, within time.Duration) {
	t.Helper()
	if err := procWaitJetStream(n.url(), within, n.running); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
}

// procWaitJetStream waits until JetStream at url answers, or alive reports
// the server died, or within passes.
func procWaitJetStream(url string, within time.Duration, alive func() bool) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		if alive != nil && !alive() {
			return errors.New("the server exited")
		}
		last = procJetStreamAnswers(url)
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("JetStream at %s not ready within %s: %v", url, within, last)
}

func procJetStreamAnswers(url string) error {
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

// procComponent is the component binary serving its socket.
type procComponent struct {
	*procProcess
	socket string
}

// procNewComponent prepares, without starting, the component with its socket
// in folder, named sockName, and the given extra flags.
func procNewComponent(t testing.TB, folder, sockName string, extra ...string) *procComponent {
	t.Helper()
	args := append([]string{"-socket-folder", folder, "-socket-name", sockName, "-log-level", "debug"}, extra...)
	p := procNew(t, "component "+sockName, procComponentBinary(t), args...)
	return &procComponent{procProcess: p, socket: filepath.Join(folder, sockName+".sock")}
}

// startServing starts the component and waits until its socket accepts
// connections.
func (c *procComponent) startServing(t testing.TB, within time.Duration) {
	t.Helper()
	c.start()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if !c.running() {
			err, _ := c.wait(0)
			t.Fatalf("%s exited at start: %v", c.name, err)
		}
		if conn, err := net.DialTimeout("unix", c.socket, 200*time.Millisecond); err == nil {
			_ = conn.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not serve %s within %s", c.name, c.socket, within)
}
