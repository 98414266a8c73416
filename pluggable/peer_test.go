package pluggable

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestPeerListenerTagsTheCallersProcess(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("peer credentials are read on Linux and macOS only")
	}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	opened, closed := make(chan int, 1), make(chan int, 2)
	pl := &peerListener{Listener: l, opened: func(a peerAddr) { opened <- a.pid }, closed: func(a peerAddr) { closed <- a.pid }}
	defer pl.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := pl.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := <-accepted
	if got := (<-opened); got != os.Getpid() {
		t.Errorf("opened with pid %d, want this process, %d", got, os.Getpid())
	}
	if a, ok := c.RemoteAddr().(peerAddr); !ok || a.pid != os.Getpid() {
		t.Errorf("RemoteAddr is %#v, want a peerAddr with pid %d", c.RemoteAddr(), os.Getpid())
	}
	_ = c.Close()
	_ = c.Close()
	if got := <-closed; got != os.Getpid() {
		t.Errorf("closed with pid %d, want %d", got, os.Getpid())
	}
	select {
	case <-closed:
		t.Error("a connection closed twice was reported twice")
	default:
	}
}

func TestProcessGone(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("processes are watched on Linux and macOS only")
	}
	if processGone(os.Getpid()) {
		t.Fatal("this process counts as gone")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep command: %v", err)
	}
	pid := cmd.Process.Pid
	if processGone(pid) {
		t.Fatal("a running child counts as gone")
	}
	_ = cmd.Process.Kill()
	if runtime.GOOS == "linux" {
		// Killed but not yet reaped: a zombie has exited all the same.
		deadline := time.Now().Add(5 * time.Second)
		for !processGone(pid) {
			if time.Now().After(deadline) {
				t.Fatal("a killed, unreaped child does not count as gone")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	_ = cmd.Wait()
	if !processGone(pid) {
		t.Fatal("a reaped child does not count as gone")
	}
}
