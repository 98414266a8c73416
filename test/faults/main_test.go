//go:build faults

// Package faults breaks real processes under the component — NATS, the
// component itself, daprd's stream, a JetStream cluster — and feeds it bad
// input and bad credentials, to show nothing is lost and nobody gets in.
//
// Every log line the component writes during these tests, in-process or from
// a child process, goes through logSink; TestMain fails the run if any value
// registered with secret() appears in it.
package faults

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/dapr/kit/logger"
	"go.uber.org/goleak"
)

var (
	sinkMu  sync.Mutex
	sink    bytes.Buffer
	secrets []string
)

// logSink is where component logs go, in-process and from child processes.
var logSink io.Writer = sinkWriter{}

type sinkWriter struct{}

func (sinkWriter) Write(p []byte) (int, error) {
	sinkMu.Lock()
	defer sinkMu.Unlock()
	return sink.Write(p)
}

// secret registers a value that must never appear in any log, and returns it.
func secret(v string) string {
	sinkMu.Lock()
	defer sinkMu.Unlock()
	secrets = append(secrets, v)
	return v
}

// newLogger returns a component logger writing to logSink.
func newLogger(name string) logger.Logger {
	l := logger.NewLogger(name)
	l.SetOutput(logSink)
	l.SetOutputLevel(logger.DebugLevel)
	return l
}

// logsContain reports whether the logs so far contain s.
func logsContain(s string) bool {
	sinkMu.Lock()
	defer sinkMu.Unlock()
	return strings.Contains(sink.String(), s)
}

func TestMain(m *testing.M) {
	code := m.Run()
	sinkMu.Lock()
	logs := sink.String()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			fmt.Fprintf(os.Stderr, "FAIL: a secret registered by a test appears in the component's logs (%d bytes of logs checked)\n", len(logs))
			code = 1
		}
	}
	fmt.Fprintf(os.Stderr, "faults: checked %d bytes of component logs for %d secrets\n", len(logs), len(secrets))
	sinkMu.Unlock()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
