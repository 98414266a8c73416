package natstest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// serverLog keeps the server's warnings and errors, which usually carry the
// cause that an API error leaves out (a stream create answers only "error
// creating store for stream"), and prints them when the test fails.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func attachServerLog(t testing.TB) *serverLog {
	l := &serverLog{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nats-server warnings and errors:\n%s", l.String())
		}
	})
	return l
}

func (l *serverLog) add(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+fmt.Sprintf(format, v...))
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return "(none)"
	}
	return strings.Join(l.lines, "\n")
}

func (l *serverLog) Noticef(string, ...any)    {}
func (l *serverLog) Debugf(string, ...any)     {}
func (l *serverLog) Tracef(string, ...any)     {}
func (l *serverLog) Warnf(f string, v ...any)  { l.add("[WRN]", f, v...) }
func (l *serverLog) Errorf(f string, v ...any) { l.add("[ERR]", f, v...) }
func (l *serverLog) Fatalf(f string, v ...any) { l.add("[FTL]", f, v...) }
