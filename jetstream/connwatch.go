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
	// refusal is the authentication error with which NATS ended the
	// connection (the user JWT expired or was revoked), if it did.
	refusal error
	retry   time.Duration
	creds   credentials
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
	if e.refusal != nil && (e.last == nil || e.last.Error() != e.refusal.Error()) {
		fmt.Fprintf(&b, "; NATS ended the connection with: %v", e.refusal)
	}
	b.WriteString(")")
	if e.state == nats.CLOSED {
		fmt.Fprintf(&b, ": the connection is closed and not retried; %s, then initialize the component again", e.hint())
	} else {
		fmt.Fprintf(&b, ": retrying every %s; %s", e.retry, e.hint())
	}
	return b.String()
}

// hint says what to check: the refusal that ended the connection tells
// more than the attempts after it, which NATS refuses as a plain
// authorization violation.
func (e *notConnectedError) hint() string {
	if e.refusal != nil {
		return e.creds.hint(e.refusal)
	}
	return e.creds.hint(e.last)
}

// steadyNotConnected is a notConnectedError without the figures that change
// while the outage lasts (how long, how many attempts, the last error). A
// subscription logs its problem again whenever the text changes and counts
// how long it lasts from then, so it reports this form: once, lasting until
// NATS is back. The connection's own warnings follow the attempts.
type steadyNotConnected struct{ *notConnectedError }

func (e steadyNotConnected) Error() string {
	refusal := ""
	if e.refusal != nil {
		refusal = "; NATS ended the connection with: " + e.refusal.Error()
	}
	return fmt.Sprintf("NATS at %s is not connected (state %s, tried every %s%s); %s",
		e.url, e.state, e.retry, refusal, e.hint())
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

// credentials names the metadata fields that hold the identity NATS
// checks, so that an authentication error says which to fix and how.
type credentials struct {
	fields string // such as "credsFile", or "" when none is set
	// reread is set when nats.go reads them again at each connection
	// attempt (credsFile), so that updating them needs no restart.
	reread bool
}

// credentialsOf names the identity that c sets.
func credentialsOf(c metadata.Connection) credentials {
	switch {
	case c.Token != "":
		return credentials{fields: "token"}
	case c.User != "":
		return credentials{fields: "user and password"}
	case c.JWT != "":
		return credentials{fields: "jwt and seedKey"}
	case c.NKeySeed != "":
		return credentials{fields: "nkeySeed"}
	case c.CredsFile != "":
		return credentials{fields: "credsFile", reread: true}
	case metadata.RedactURL(c.URL) != c.URL:
		return credentials{fields: "the user information in natsURL"}
	}
	return credentials{}
}

// hint says what to check, given the last connection error.
func (c credentials) hint(err error) string {
	var fe *metadata.FieldError
	switch {
	case errors.As(err, &fe):
		return "write the whole file to " + fe.Field + " (replace it at once, as a Kubernetes Secret volume does, rather than in place); it is read again at each connection attempt"
	case isAuthError(err):
		return c.authHint()
	case err != nil && strings.Contains(err.Error(), "tls"):
		return "check tls_ca_file, tls_client_cert and tls_client_key, and that natsURL names the server they are for"
	}
	return "check natsURL and that nats-server is running and reachable from here"
}

// authHint names the fields NATS refused, and how a new value takes effect.
func (c credentials) authHint() string {
	switch {
	case c.fields == "":
		return "check the authentication fields: NATS requires credentials (token, user and password, nkeySeed, jwt and seedKey, or credsFile)"
	case c.reread:
		return "check the authentication fields: NATS refuses the user in " + c.fields +
			" (expired, revoked, or not of an account it knows); write renewed credentials to that file (nsc generate creds), which is read again at each connection attempt, so no restart is needed"
	}
	return "check the authentication fields: NATS refuses " + c.fields +
		" (changed on the server, expired or revoked); the component keeps the values it was initialized with, so initialize it again with the new ones (daprd reads Secrets when it starts: restart it)"
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
	creds credentials

	mu        sync.Mutex
	nc        *nats.Conn
	everUp    bool      // the connection was made at least once
	downSince time.Time // when it went down, or Init started; zero while up
	attempts  int       // failed attempts since downSince
	lastErr   error
	// refusal is the authentication error NATS gave as it ended the
	// connection, kept until it is up again: the attempts after it fail
	// with a plain authorization violation, which no longer says why.
	refusal   error
	refusedAt time.Time
	timer     *time.Timer // the next repeated warning, while down
	gen       int         // tells the current timer from one stopped too late
	// recorded is closed once the handlers have recorded that the
	// connection made last went down (see notConnected); nil before the
	// first connection and after the loss.
	recorded chan struct{}
}

// handlersLag bounds how long a call that finds the connection down waits
// for nats.go's handlers to record why.
const handlersLag = 200 * time.Millisecond

func newConnWatch(l logger.Logger, c metadata.Connection) *connWatch {
	return &connWatch{
		log: l, url: metadata.RedactURL(c.URL), retry: c.ReconnectWait, every: unreachableWarnEvery,
		creds: credentialsOf(c), downSince: time.Now(),
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

// refusedKeep is how long before the connection drops an authentication
// error from NATS counts as the reason: nats.go reports both through one
// queue, the error first.
const refusedKeep = 5 * time.Second

// refused records an authentication error NATS sent on an established
// connection (ErrorHandler): it ends the connection next.
func (w *connWatch) refused(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.downSince.IsZero() {
		w.refusal, w.refusedAt = err, time.Now()
	}
}

// lost records that an established connection went down
// (DisconnectErrHandler), and returns the authentication error that ended
// it, if any.
func (w *connWatch) lost(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if w.refusal != nil && now.Sub(w.refusedAt) > refusedKeep {
		w.refusal = nil
	}
	w.everUp, w.downSince, w.attempts, w.lastErr = true, now, 0, err
	w.recordedLocked()
	w.armLocked()
	return w.refusal
}

// closedOnPurpose records that the connection went down without an error:
// it was closed, or a reconnect was forced on it.
func (w *connWatch) closedOnPurpose() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recordedLocked()
}

func (w *connWatch) recordedLocked() {
	if w.recorded != nil {
		close(w.recorded)
		w.recorded = nil
	}
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
	w.everUp, w.downSince, w.attempts, w.lastErr, w.refusal = true, time.Time{}, 0, nil, nil
	if w.recorded == nil {
		w.recorded = make(chan struct{})
	}
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
	if e.refusal != nil {
		cause += "; NATS ended the connection with: " + e.refusal.Error()
	}
	w.log.Warnf("NATS at %s is still not reachable %s: %s failed%s; retrying every %s. To fix: %s",
		e.url, since, attempts(e.attempts), cause, e.retry, e.hint())
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
	w.mu.Lock()
	recorded := w.recorded
	w.mu.Unlock()
	if recorded != nil {
		// nats.go changes the state first, and then its handlers record
		// the loss, after the error with which NATS ended the connection
		// (an expired or revoked user): wait for them a moment, so that
		// the error says why.
		select {
		case <-recorded:
		case <-time.After(handlersLag):
		}
		state = nc.Status()
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
	e := &notConnectedError{url: w.url, state: state, everUp: w.everUp, attempts: w.attempts, retry: w.retry, creds: w.creds, refusal: w.refusal}
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
