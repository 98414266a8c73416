package natstest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrKilled is wrapped by Proc.Stop when the process had to be killed
// because it did not exit within the grace period.
var ErrKilled = errors.New("killed")

// killWait bounds the wait for a killed process to be reaped, so that a
// process stuck in the kernel cannot hang a test's cleanup.
const killWait = 10 * time.Second

// Spec says what a Proc runs.
type Spec struct {
	Name string
	Bin  string
	Args []string
	// Env is added to this process's environment.
	Env []string
	// Echo, if set, also receives the output, each line prefixed with
	// "[Name] " so that interleaved processes stay apart.
	Echo io.Writer
	// Keep is how many bytes of output are kept; 0 keeps all of it. Long
	// runs set it so that a chatty child cannot fill the memory.
	Keep int
}

// Proc is a child process with its combined output kept in memory. It can be
// started again with the same Spec after it exited, keeping one output.
type Proc struct {
	Spec
	out *Output

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
}

// NewProc prepares, without starting, a Proc for s.
func NewProc(s Spec) *Proc {
	return &Proc{Spec: s, out: NewOutput(s.Name, s.Keep, s.Echo)}
}

// StartProc prepares and starts a Proc for s.
func StartProc(s Spec) (*Proc, error) {
	p := NewProc(s)
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Start runs the process; it must not be running.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is already running", p.Name)
	}
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// StartT starts p, failing t if it cannot, kills it when t ends and shows
// its output if t failed.
func (p *Proc) StartT(t testing.TB) {
	t.Helper()
	p.CleanupT(t)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
}

// CleanupT kills p when t ends and then, if t failed (or
// NATSTEST_SHOW_LOGS=1), logs the last of its output.
func (p *Proc) CleanupT(t testing.TB) {
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() || os.Getenv("NATSTEST_SHOW_LOGS") == "1" {
			t.Logf("--- last output of %s ---\n%s", p.Name, p.Tail(200))
		}
	})
}

func (p *Proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// Pid is the process id of the latest start, or 0 before the first.
func (p *Proc) Pid() int {
	cmd, _ := p.current()
	if cmd == nil {
		return 0
	}
	return cmd.Process.Pid
}

// Done is closed when the latest start has exited; it is nil before the
// first start.
func (p *Proc) Done() <-chan struct{} {
	_, done := p.current()
	return done
}

// Exited reports whether the process was started and has exited since.
func (p *Proc) Exited() bool {
	_, done := p.current()
	return done != nil && isClosed(done)
}

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	_, done := p.current()
	return done != nil && !isClosed(done)
}

// Err waits for the process to exit and returns its exit error (nil for exit
// code 0).
func (p *Proc) Err() error {
	if done := p.Done(); done != nil {
		<-done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Wait waits up to d for the process to exit and returns whether it did and
// its exit error. A process never started counts as exited.
func (p *Proc) Wait(d time.Duration) (exited bool, err error) {
	done := p.Done()
	if done == nil {
		return true, nil
	}
	select {
	case <-done:
		return true, p.Err()
	case <-time.After(d):
		return false, nil
	}
}

// Signal sends sig to the running process.
func (p *Proc) Signal(sig os.Signal) error {
	cmd, done := p.current()
	if cmd == nil || isClosed(done) {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills. It
// returns the exit error of a process that exited in time (nil for exit code
// 0), or an error wrapping ErrKilled.
func (p *Proc) Stop(grace time.Duration) error {
	if !p.Running() {
		return p.exitErrIfStarted()
	}
	_ = p.Signal(syscall.SIGTERM)
	if exited, err := p.Wait(grace); exited {
		return err
	}
	p.Kill()
	return fmt.Errorf("%s did not exit within %s of SIGTERM and was %w", p.Name, grace, ErrKilled)
}

func (p *Proc) exitErrIfStarted() error {
	if p.Done() == nil {
		return nil
	}
	return p.Err()
}

// Kill sends SIGKILL and waits (a bounded time) for the process to go; it
// does nothing if the process is not running.
func (p *Proc) Kill() {
	cmd, done := p.current()
	if cmd == nil || isClosed(done) {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(killWait):
	}
}

// Output returns what the process wrote so far (the last Keep bytes, if set).
func (p *Proc) Output() string { return p.out.String() }

// Tail returns the last n lines of the output.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Output(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// WaitFor polls cond every interval until it returns nil. It gives up when
// timeout passes or the process exits, with an error that carries the last
// lines of the output.
func (p *Proc) WaitFor(timeout, interval time.Duration, cond func() error) error {
	err := Await(timeout, interval, p.Done(), cond)
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", p.Name, err, p.Tail(30))
	}
	return nil
}

// WaitForOutput waits until the output matches re and returns the first
// match and its submatches.
func (p *Proc) WaitForOutput(timeout time.Duration, re *regexp.Regexp) ([]string, error) {
	var m []string
	err := p.WaitFor(timeout, 20*time.Millisecond, func() error {
		if m = re.FindStringSubmatch(p.Output()); m == nil {
			return fmt.Errorf("no line matches %q", re)
		}
		return nil
	})
	return m, err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Output keeps what a process or logger writes, safe for concurrent
// writers, and echoes it line by line.
type Output struct {
	mu   sync.Mutex
	buf  []byte
	keep int
	echo io.Writer
	name string
	// midLine is set when the last write ended inside a line: the prefix
	// goes only before a line's start, so that a line written in pieces
	// stays whole in echo (the faults suite searches it for secrets).
	midLine bool
}

// NewOutput keeps the last keep bytes written (all of them if keep is 0) and
// copies each line to echo, if set, prefixed with "[name] ".
func NewOutput(name string, keep int, echo io.Writer) *Output {
	return &Output{keep: keep, echo: echo, name: name}
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.echo != nil {
		o.echoLines(p)
	}
	o.buf = append(o.buf, p...)
	// Trimming only at twice the bound keeps the copying rare.
	if o.keep > 0 && len(o.buf) > 2*o.keep {
		o.buf = append([]byte(nil), o.buf[len(o.buf)-o.keep:]...)
	}
	return len(p), nil
}

func (o *Output) echoLines(p []byte) {
	for _, piece := range strings.SplitAfter(string(p), "\n") {
		if piece == "" {
			continue
		}
		if !o.midLine {
			fmt.Fprintf(o.echo, "[%s] ", o.name)
		}
		_, _ = io.WriteString(o.echo, piece)
		o.midLine = !strings.HasSuffix(piece, "\n")
	}
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	b := o.buf
	if o.keep > 0 && len(b) > o.keep {
		b = b[len(b)-o.keep:]
	}
	return string(b)
}
