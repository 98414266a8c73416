package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

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

// natsServer is nats-server as its own process.
type natsServer struct {
	*natstest.Proc
	url   string
	store string
}

func startNATS(bin, dir string) (*natsServer, error) {
	port, err := natstest.FreePort()
	if err != nil {
		return nil, err
	}
	store := filepath.Join(dir, "jetstream")
	p, err := startChild(natstest.Spec{
		Name: "nats-server", Bin: bin, Args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", store},
	})
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := p.WaitFor(20*time.Second, pollEvery, natstest.Dials("tcp", addr)); err != nil {
		_ = p.Stop(time.Second)
		return nil, err
	}
	return &natsServer{Proc: p, url: "nats://" + addr, store: store}, nil
}

// component is the pluggable component as its own process.
type component struct {
	*natstest.Proc
	socket string
}

// componentCmd says how to start the component: the binary built from the
// repository root, or (with -cpuprofile) this bench binary hosting
// pluggable.Run with a CPU profile.
type componentCmd struct {
	bin     string
	args    []string
	env     []string // added to the component's environment (-component-env)
	profile string   // directory for profiles, or ""
}

func (cc componentCmd) start(ctx context.Context, folder, label string) (*component, error) {
	if err := os.MkdirAll(folder, 0o750); err != nil {
		return nil, err
	}
	args := append([]string(nil), cc.args...)
	if cc.profile != "" {
		args = append(args, "-component-cpuprofile", filepath.Join(cc.profile, "component-"+label+".pprof"))
	}
	env := append([]string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + folder, "JETSTREAM_LOG_LEVEL=warn"}, cc.env...)
	p, err := startChild(natstest.Spec{Name: "component(" + label + ")", Bin: cc.bin, Args: args, Env: env})
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(folder, "nats-jetstream.sock")
	if err := p.WaitFor(30*time.Second, pollEvery, unlessDone(ctx, natstest.Dials("unix", sock))); err != nil {
		_ = p.Stop(time.Second)
		return nil, err
	}
	return &component{Proc: p, socket: sock}, nil
}

// pollEvery is how often a start-up condition is checked.
const pollEvery = 20 * time.Millisecond

// keepOutput bounds what the bench keeps of a child's output: runs are long,
// and only the last lines matter, for an error.
const keepOutput = 32 << 10

// startChild starts a child process of the bench, keeping the last of its
// output.
func startChild(s natstest.Spec) (*natstest.Proc, error) {
	s.Keep = keepOutput
	return natstest.StartProc(s)
}

// unlessDone is cond, failing at once when ctx ends (the bench was
// interrupted).
func unlessDone(ctx context.Context, cond func() error) func() error {
	return func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return cond()
	}
}
