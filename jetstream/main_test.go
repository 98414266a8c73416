package jetstream

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind: every
// PubSub, subscription and nats.go connection must be gone once Close and the
// servers' Shutdown have returned.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
