package jetstream

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// unreachableWarnInterval is how often the log repeats that NATS cannot be
// reached, for as long as that lasts.
const unreachableWarnInterval = 30 * time.Second

// unreachableWarnEvery is unreachableWarnInterval; tests shorten it.
var unreachableWarnEvery = unreachableWarnInterval

// notConnectedError is the error of a call made while NATS is not connected.
// It says which server, since when and why, and what to check.
type notConnectedError struct {
	url      string // redacted
	state    nats.Status
	everUp   bool
	down     time.Duration
	attempts int
	last     error // the last connection error, if known
	retry    time.Duration
}

func (e *notConnectedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "NATS at %s is not connected (state %s, ", e.url, e.state)
	switch {
	case e.everUp && e.down == 0:
		// nats.go changed the state before it called the handler.
		b.WriteString("connection lost just now")
	case e.everUp:
		fmt.Fprintf(&b, "connection lost %s ago", roughly(e.down))
	default:
		fmt.Fprintf(&b, "not reached in the %s since Init", roughly(e.down))
	}
	if e.attempts > 0 {
		fmt.Fprintf(&b, ", %s failed", attempts(e.attempts))
	}
	if e.last != nil {
		fmt.Fprintf(&b, ", last error: %v", e.last)
	}
	b.WriteString(")")
	if e.state == nats.CLOSED {
		fmt.Fprintf(&b, ": the connection is closed and not retried; %s, then initialize the component again", connHint(e.last))
	} else {
		fmt.Fprintf(&b, ": retrying every %s; %s", e.retry, connHint(e.last))
	}
	return b.String()
}

// steadyNotConnected is a notConnectedError without the figures that change
// while the outage lasts (how long, how many attempts, the last error). A
// subscription logs its problem again whenever the text changes and counts
// how long it lasts from then, so it reports this form: once, lasting until
// NATS is back. The connection's own warnings follow the attempts.
type steadyNotConnected struct{ *notConnectedError }

func (e steadyNotConnected) Error() string {
	return fmt.Sprintf("NATS at %s is not connected (state %s, tried every %s); %s",
		e.url, e.state, e.retry, connHint(e.last))
}

// steady turns an error of notConnected into its steadyNotConnected form;
// other errors are returned as they are.
func steady(err error) error {
	var e *notConnectedError
	if !errors.As(err, &e) {
		return err
	}
	return steadyNotConnected{e}
}

// connHint says what to check, given the last connection error.
func connHint(err error) string {
	switch {
	case isAuthError(err):
		return "check the authentication fields"
	case err != nil && strings.Contains(err.Error(), "tls"):
		return "check tls_ca_file, tls_client_cert and tls_client_key, and that natsURL names the server they are for"
	}
	return "check natsURL and that nats-server is running and reachable from here"
}

// Is makes errors.Is(err, ErrNotConnected) hold.
func (e *notConnectedError) Is(target error) bool { return target == ErrNotConnected }

// connWatch follows the connection to NATS through nats.go's handlers: since
// when it is down, how many attempts to make it failed and why. Calls made
// while it is down fail at once with that (notConnected) instead of waiting
// for their deadline, and the log repeats it every unreachableWarnEvery for
// as long as it lasts, since a single line at start is easily missed.
type connWatch struct {
	log   logger.Logger
	url   string // the configured URLs, redacted
	retry time.Duration
	every time.Duration

	mu        sync.Mutex
	nc        *nats.Conn
	everUp    bool      // the connection was made at least once
	downSince time.Time // when it went down, or Init started; zero while up
	attempts  int       // failed attempts since downSince
	lastErr   error
	timer     *time.Timer // the next repeated warning, while down
	gen       int         // tells the current timer from one stopped too late
}

func newConnWatch(l logger.Logger, rawURL string, retry time.Duration) *connWatch {
	return &connWatch{
		log: l, url: metadata.RedactURL(rawURL), retry: retry, every: unreachableWarnEvery,
		downSince: time.Now(),
	}
}

// watch starts following nc, once nats.Connect returned it, until nc is
// closed or stop is. Its goroutine is counted in wg.
//
// nats.go reports to ReconnectErrHandler only the attempts that could not
// open a socket. An attempt that reaches a server whose handshake fails (a
// server still starting, or something that is not NATS at natsURL) only shows
// as a change of state, CONNECTING and back, so those are counted here.
func (w *connWatch) watch(nc *nats.Conn, stop <-chan struct{}, wg *sync.WaitGroup) {
	states := nc.StatusChanged(nats.CONNECTING, nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	w.mu.Lock()
	w.nc = nc
	if nc.IsConnected() {
		w.everUp, w.downSince, w.attempts, w.lastErr = true, time.Time{}, 0, nil
	} else {
		w.armLocked()
	}
	w.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer nc.RemoveStatusListener(states)
		handshake := false
		for {
			select {
			case <-stop:
				return
			case s := <-states:
				switch s {
				case nats.CONNECTING:
					handshake = true
				case nats.RECONNECTING, nats.DISCONNECTED:
					if handshake {
						w.failed(nc.LastError())
					}
					handshake = false
				case nats.CONNECTED:
					handshake = false
				case nats.CLOSED:
					return
				}
			}
		}
	}()
}

// failed records a failed connection attempt (ReconnectErrHandler, or a
// failed handshake); err may be nil when the cause is gone already.
func (w *connWatch) failed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.attempts++
	if err != nil {
		w.lastErr = err
	}
}

// lost records that an established connection went down
// (DisconnectErrHandler).
func (w *connWatch) lost(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.everUp, w.downSince, w.attempts, w.lastErr = true, time.Now(), 0, err
	w.armLocked()
}

// up records that the connection is made (ConnectHandler, ReconnectHandler)
// and returns how long it was down and how many attempts failed meanwhile.
func (w *connWatch) up() (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var down time.Duration
	if !w.downSince.IsZero() {
		down = time.Since(w.downSince)
	}
	attempts := w.attempts
	w.everUp, w.downSince, w.attempts, w.lastErr = true, time.Time{}, 0, nil
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	return down, attempts
}

func (w *connWatch) armLocked() {
	if w.timer == nil {
		w.gen++
		gen := w.gen
		w.timer = time.AfterFunc(w.every, func() { w.warn(gen) })
	}
}

// warn repeats the warning while the connection is down. A timer, not the
// ReconnectErrHandler, drives it: nats.go calls that handler only when it
// cannot open a socket, not when a server answers but the handshake fails
// (say, natsURL names some other service), and the warning must go on then
// too. It stops by itself once the connection is up or closed.
func (w *connWatch) warn(gen int) {
	w.mu.Lock()
	nc := w.nc
	w.mu.Unlock()
	var state nats.Status
	var last error
	if nc != nil {
		state, last = nc.Status(), nc.LastError()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer == nil || w.gen != gen {
		return // up() stopped it meanwhile
	}
	if nc != nil && (state == nats.CONNECTED || state == nats.CLOSED || nc.IsDraining()) {
		w.timer = nil
		return
	}
	w.timer.Reset(w.every)
	if nc == nil {
		return // Init has not got the connection yet
	}
	e := w.errorLocked(state, last)
	since := "after " + roughly(e.down)
	if e.everUp {
		since = "(connection lost " + roughly(e.down) + " ago)"
	}
	cause := ""
	if e.last != nil {
		cause = ", the last with: " + e.last.Error()
	}
	w.log.Warnf("NATS at %s is still not reachable %s: %s failed%s; retrying every %s. To fix: %s",
		e.url, since, attempts(e.attempts), cause, e.retry, connHint(e.last))
}

// notConnected returns the error for a call made now, or nil while NATS is
// connected.
func (w *connWatch) notConnected() error {
	w.mu.Lock()
	nc := w.nc
	w.mu.Unlock()
	if nc == nil {
		return nil // before Init got the connection, calls cannot get here
	}
	state := nc.Status()
	if state == nats.CONNECTED || nc.IsDraining() {
		return nil
	}
	last := nc.LastError()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errorLocked(state, last)
}

// errorLocked describes the connection as it is. nc.LastError holds the
// failure of a handshake in the current attempt, which no handler reports;
// otherwise the last error a handler reported stands.
func (w *connWatch) errorLocked(state nats.Status, ncErr error) *notConnectedError {
	e := &notConnectedError{url: w.url, state: state, everUp: w.everUp, attempts: w.attempts, retry: w.retry}
	if !w.downSince.IsZero() {
		e.down = time.Since(w.downSince)
	}
	e.last = w.lastErr
	if ncErr != nil {
		e.last = ncErr
	}
	return e
}

// roughly rounds d for people: to the millisecond under a second, to the
// tenth of a second under a minute, else to the second.
func roughly(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// attempts counts connection attempts in words.
func attempts(n int) string {
	if n == 1 {
		return "1 connection attempt"
	}
	return fmt.Sprintf("%d connection attempts", n)
}
