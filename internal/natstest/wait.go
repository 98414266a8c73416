package natstest

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Within returns the next value of ch, or an error if none comes within d.
func Within[T any](ch <-chan T, d time.Duration) (T, error) {
	select {
	case v := <-ch:
		return v, nil
	case <-time.After(d):
		var zero T
		return zero, fmt.Errorf("nothing received within %s", d)
	}
}

// Recv returns the next value of ch, failing t if none comes within d.
func Recv[T any](t testing.TB, ch <-chan T, d time.Duration) T {
	t.Helper()
	v, err := Within(ch, d)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Nothing fails t if ch yields a value within window. The window is held
// open on purpose: it is how long something that must not happen is given
// to happen.
func Nothing[T any](t testing.TB, ch <-chan T, window time.Duration) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected value within %s: %v", window, v)
	case <-time.After(window):
	}
}

// Await polls cond every interval until it returns nil, and returns cond's
// last error if timeout passes first. abort, if it is closed, ends the wait
// early (a process that died) after one more look at cond.
func Await(timeout, interval time.Duration, abort <-chan struct{}, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not so after %s: %w", timeout, err)
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

// AwaitT is Await for a test: it fails t with what names the condition and
// cond's last error.
func AwaitT(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Await(timeout, 20*time.Millisecond, nil, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// errNotYet is what a cond made from a bool reports.
var errNotYet = errors.New("not yet")

// Check turns a bool condition into one for Await.
func Check(ok func() bool) func() error {
	return func() error {
		if ok() {
			return nil
		}
		return errNotYet
	}
}
