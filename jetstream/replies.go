package jetstream

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// replyResubscribeEvery is how often the connection is made again while
// NATS refuses the subscription on which nats.go receives JetStream's
// answers: each new connection asks for it again, and the first one after
// the permission is back gets it.
const replyResubscribeEvery = 5 * time.Second

// replyInbox follows the subscriptions nats.go makes for itself to receive
// the answers to requests and publishes (_INBOX.<id>.*). When the user's
// permissions change so that it may no longer subscribe to them, NATS
// removes them, and nats.go never asks for them again on that connection:
// every JetStream call and publish then times out, also after the
// permission is back. Only a new connection subscribes to them again, so
// one is made every replyResubscribeEvery while they are refused.
type replyInbox struct {
	mu        sync.Mutex
	refused   string // the subject NATS removed, "" while it is held
	refusedAt time.Time
	warnedAt  time.Time   // when the refusal was last logged
	timer     *time.Timer // the next new connection, if one is due
	closed    bool
}

// isReplyInbox reports whether subject is one of nats.go's own reply
// subscriptions, which end in a wildcard; the inboxes of pull requests are
// plain subjects.
func isReplyInbox(subject string) bool { return strings.HasSuffix(subject, ".*") }

// replyWarnEvery bounds how often the refusal is logged: each new
// connection is refused again while it lasts.
const replyWarnEvery = time.Minute

// removed records that NATS refused or removed the reply subscription
// subject, and has nc connect again after replyResubscribeEvery. It
// reports whether the refusal is to be logged: at most every
// replyWarnEvery.
func (r *replyInbox) removed(subject string, nc *nats.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.refused, r.refusedAt = subject, now
	warn := now.Sub(r.warnedAt) >= replyWarnEvery
	if warn {
		r.warnedAt = now
	}
	if !r.closed && r.timer == nil {
		r.timer = time.AfterFunc(replyResubscribeEvery, func() { r.reconnect(nc) })
	}
	return warn
}

// reconnect makes a new connection, which subscribes again.
func (r *replyInbox) reconnect(nc *nats.Conn) {
	r.mu.Lock()
	r.timer = nil
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return
	}
	_ = nc.ForceReconnect()
}

// reconnected records a new connection: it subscribed again, and NATS says
// so if it refuses again.
func (r *replyInbox) reconnected() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused = ""
}

// close stops making new connections.
func (r *replyInbox) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// problem says why no JetStream answer can arrive, or nil.
func (r *replyInbox) problem() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refused == "" {
		return nil
	}
	prefix, _, _ := strings.Cut(r.refused, ".")
	return fmt.Errorf("NATS does not allow this connection to subscribe to %q (since %s), where JetStream's answers to its publishes and requests arrive, so none arrives; grant the NATS user subscribe permission for %s.> in the server's authorization or the user's JWT (nsc edit user --allow-sub); the component connects again every %s to subscribe once it may",
		r.refused, r.refusedAt.UTC().Format(time.RFC3339), prefix, replyResubscribeEvery)
}

// noteReplyInbox handles err from nats.go's ErrorHandler when it is the
// refusal of a reply subscription, and reports whether it was.
func (p *PubSub) noteReplyInbox(nc *nats.Conn, err error) bool {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return false
	}
	m := deniedSubscribe.FindStringSubmatch(err.Error())
	if m == nil || !isReplyInbox(m[1]) {
		return false
	}
	if p.replies.removed(m[1], nc) {
		p.log.Warn(p.replies.problem().Error())
	}
	return true
}
