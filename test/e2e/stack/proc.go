// Package stack starts and stops the processes of an end-to-end run: an
// in-process nats-server, the component binary, a real daprd and the tweet
// app. It is shared by the e2e tests and `make demo`.
package stack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process whose combined output is kept in memory.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	echo io.Writer
	name string
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.echo != nil {
		for _, line := range strings.SplitAfter(string(p), "\n") {
			if line != "" {
				fmt.Fprintf(b.echo, "[%s] %s", b.name, line)
			}
		}
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// StartProc starts bin. Its output is kept (see Output) and, if echo is not
// nil, also copied there line by line with a [name] prefix. The child gets
// SIGKILL if the parent dies, so nothing outlives a crashed test.
func StartProc(name string, env []string, echo io.Writer, bin string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, out: &syncBuffer{echo: echo, name: name}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Output returns everything the process wrote so far.
func (p *Proc) Output() string { return p.out.String() }

// Tail returns the last n lines of the output.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Output(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d earlier lines)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit error, once it has exited.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to a running process.
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM and waits up to grace for the exit, then kills. It
// returns the exit error of a process that exited by itself in time (nil for
// exit code 0), or an error saying it had to be killed.
func (p *Proc) Stop(grace time.Duration) error {
	if p.Exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM and was killed", p.Name, grace)
	}
}

// Kill kills the process and waits for it to go.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// FreePort returns a loopback TCP port that was free a moment ago and that
// this process has not handed out before, so parallel tests never pick the
// same port.
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !ports[port] {
			ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port found")
}

// waitFor polls cond every interval until it returns nil or timeout passes,
// and then returns cond's last error. abort, if it fires, ends the wait early
// (a process that died).
func waitFor(timeout, interval time.Duration, abort <-chan struct{}, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not ready after %s: %w", timeout, err)
		}
		select {
		case <-abort:
			if err := cond(); err == nil {
				return nil
			}
			return fmt.Errorf("the process exited while waiting: %w", err)
		case <-time.After(interval):
		}
	}
}
