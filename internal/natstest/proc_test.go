package natstest

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shell runs script with sh, the one program the kit's tests can count on.
func shell(t *testing.T, name, script string) *Proc {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on this machine")
	}
	p := NewProc(Spec{Name: name, Bin: sh, Args: []string{"-c", script}})
	p.CleanupT(t)
	return p
}

func TestProcWaitsForOutputAndStops(t *testing.T) {
	p := shell(t, "sleeper", `trap 'echo bye; exit 0' TERM; echo "ready on port 42"; while :; do sleep 0.05; done`)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	m, err := p.WaitForOutput(10*time.Second, regexp.MustCompile(`ready on port (\d+)`))
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "42" {
		t.Errorf("submatch %q, want 42", m[1])
	}
	if !p.Running() || p.Pid() == 0 {
		t.Fatalf("running %v, pid %d", p.Running(), p.Pid())
	}
	if err := p.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !p.Exited() || !strings.Contains(p.Output(), "bye") {
		t.Errorf("exited %v, output %q", p.Exited(), p.Output())
	}
	if err := p.Signal(syscall.SIGTERM); err == nil {
		t.Error("a signal to an exited process succeeded")
	}
}

func TestProcStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	p := shell(t, "stubborn", `trap '' TERM; echo up; while :; do sleep 0.05; done`)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitForOutput(10*time.Second, regexp.MustCompile("up")); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(200 * time.Millisecond); !errors.Is(err, ErrKilled) {
		t.Fatalf("stop: %v, want ErrKilled", err)
	}
}

func TestProcRestartsKeepingOneOutput(t *testing.T) {
	p := shell(t, "twice", `echo run; exit 3`)
	for range 2 {
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		exited, err := p.Wait(10 * time.Second)
		if !exited {
			t.Fatal("did not exit")
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Fatalf("exit error %v, want status 3", err)
		}
	}
	if got := strings.Count(p.Output(), "run"); got != 2 {
		t.Errorf("output %q holds %d runs, want 2", p.Output(), got)
	}
}

func TestProcWaitForEndsWhenTheProcessDies(t *testing.T) {
	p := shell(t, "dies", `echo dying; exit 1`)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := p.WaitFor(time.Minute, 10*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || !strings.Contains(err.Error(), "dying") {
		t.Fatalf("err %v, want one that ends with the output", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("the wait took %s: it did not end with the process", time.Since(start))
	}
}

func TestOutputKeepsTheTailAndEchoesWholeLines(t *testing.T) {
	var echo strings.Builder
	o := NewOutput("n", 8, &echo)
	for _, piece := range []string{"first li", "ne\nsecond line\n", "tail"} {
		_, _ = o.Write([]byte(piece))
	}
	if got := o.String(); got != "ine\ntail" {
		t.Errorf("kept %q, want the last 8 bytes", got)
	}
	if want := "[n] first line\n[n] second line\n[n] tail"; echo.String() != want {
		t.Errorf("echo %q, want %q", echo.String(), want)
	}
}

func TestRecvNothingAndAwait(t *testing.T) {
	ch := make(chan int, 1)
	Nothing(t, ch, 10*time.Millisecond)
	ch <- 7
	if got := Recv(t, ch, time.Second); got != 7 {
		t.Errorf("got %d", got)
	}
	if _, err := Within(ch, 10*time.Millisecond); err == nil {
		t.Error("Within of an empty channel succeeded")
	}
	n := 0
	if err := Await(5*time.Second, time.Millisecond, nil, Check(func() bool { n++; return n == 3 })); err != nil {
		t.Errorf("await: %v", err)
	}
	if err := Await(20*time.Millisecond, time.Millisecond, nil, Check(func() bool { return false })); err == nil {
		t.Error("await of a condition never true succeeded")
	}
}

func TestBinaryName(t *testing.T) {
	for pkg, want := range map[string]string{
		ComponentPackage:                        "dapr-nats-jetstream",
		NATSServerPackage:                       "nats-server",
		ComponentPackage + "/test/e2e/tweetapp": "tweetapp",
	} {
		if got := binaryName(pkg); got != want {
			t.Errorf("binaryName(%q) = %q, want %q", pkg, got, want)
		}
	}
}
