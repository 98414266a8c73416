package main

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
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// proc is a child process: nats-server, the component or daprd.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error
}

// tailBuffer keeps the last 64 KiB a child wrote.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 64<<10 {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-32<<10:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) tail(lines int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ls := strings.Split(strings.TrimRight(string(b.buf), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func startProc(name string, env []string, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, out: &tailBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// Nothing outlives a crashed bench.
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

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cpuSeconds is utime+stime of pid, from /proc/<pid>/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may contain spaces; fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return float64(ut+st) / clockTicks
}

// rssBytes is VmRSS (or another Vm* field) of pid, from /proc/<pid>/status.
func statusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func rssBytes(pid int) int64 { return statusBytes(pid, "VmRSS") }

// selfCPU is this process's user+system CPU from getrusage.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return tv(ru.Utime) + tv(ru.Stime)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// repoRoot is the directory of the module's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the bench from inside the module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// goBuild runs go build in dir and reports how long it took.
func goBuild(dir, out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, stderr.String())
	}
	return nil
}

// waitFor polls cond until it is nil, the process exits, or timeout passes.
func waitFor(p *proc, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.out.tail(30))
		}
		if time.Now().After(deadline) {
			tail := ""
			if p != nil {
				tail = "\n" + p.out.tail(30)
			}
			return fmt.Errorf("%s not ready after %s: %v%s", p.name, timeout, err, tail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// natsServer is nats-server as its own process.
type natsServer struct {
	*proc
	url   string
	store string
}

func startNATS(bin, dir string) (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	store := filepath.Join(dir, "jetstream")
	p, err := startProc("nats-server", nil, bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", store)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	err = waitFor(p, 20*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	if err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return &natsServer{proc: p, url: "nats://" + addr, store: store}, nil
}

// component is the pluggable component as its own process.
type component struct {
	*proc
	socket string
}

// componentCmd says how to start the component: the binary built from the
// repository root, or (with -cpuprofile) this bench binary hosting
// pluggable.Run with a CPU profile.
type componentCmd struct {
	bin     string
	args    []string
	profile string // directory for profiles, or ""
}

func (cc componentCmd) start(ctx context.Context, folder, label string) (*component, error) {
	if err := os.MkdirAll(folder, 0o750); err != nil {
		return nil, err
	}
	args := append([]string(nil), cc.args...)
	if cc.profile != "" {
		args = append(args, "-component-cpuprofile", filepath.Join(cc.profile, "component-"+label+".pprof"))
	}
	env := []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + folder, "JETSTREAM_LOG_LEVEL=warn"}
	p, err := startProc("component("+label+")", env, cc.bin, args...)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(folder, "nats-jetstream.sock")
	err = waitFor(p, 30*time.Second, func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	if err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return &component{proc: p, socket: sock}, nil
}
