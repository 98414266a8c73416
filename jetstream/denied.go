package jetstream

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// deniedPublish finds the subject in the error nats.go passes on for a
// publish that NATS does not allow, worded by the server as
// `Permissions Violation for Publish to "$JS.API.CONSUMER.CREATE.…"`.
var deniedPublish = regexp.MustCompile(`(?i)violation for publish to "([^"]+)"`)

// deniedSubscribe finds the subject of a subscription that NATS refused,
// or removed when the user's permissions changed, worded by the server as
// `Permissions Violation for Subscription to "_INBOX.…" (sid "5")`.
var deniedSubscribe = regexp.MustCompile(`(?i)violation for subscription to "([^"]+)"`)

// deniedKeep is how long a refused publish is remembered: longer than any
// JetStream API call waits for its answer.
const deniedKeep = time.Minute

// denials remembers the subjects NATS refused this connection to publish
// to, and when. A JetStream API request to such a subject never gets an
// answer, so the call only times out; nats.go tells of the refusal to
// ErrorHandler alone.
type denials struct {
	mu   sync.Mutex
	last map[string]time.Time
	// subs are the subjects NATS refused this connection to subscribe to,
	// and when: a refused inbox receives nothing, without another word.
	subs map[string]time.Time
}

// note records err when it is a refused publish or subscription.
func (d *denials) note(err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	if m := deniedPublish.FindStringSubmatch(err.Error()); m != nil {
		d.add(&d.last, m[1])
	} else if m := deniedSubscribe.FindStringSubmatch(err.Error()); m != nil {
		d.add(&d.subs, m[1])
	}
}

// add records subject in *seen, forgetting what is older than deniedKeep.
func (d *denials) add(seen *map[string]time.Time, subject string) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if *seen == nil {
		*seen = map[string]time.Time{}
	}
	for s, at := range *seen {
		if now.Sub(at) > deniedKeep {
			delete(*seen, s)
		}
	}
	(*seen)[subject] = now
}

// subscribeRefused reports whether NATS refused (or removed) the
// subscription to subject at t or later.
func (d *denials) subscribeRefused(subject string, t time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.subs[subject]
	return ok && !at.Before(t)
}

// since lists, sorted, the subjects starting with prefix, or equal to
// topic, that were refused at t or later.
func (d *denials) since(t time.Time, prefix, topic string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for subject, at := range d.last {
		if !at.Before(t) && (strings.HasPrefix(subject, prefix) || subject == topic) {
			out = append(out, subject)
		}
	}
	slices.Sort(out)
	return out
}

// explainDenied returns the refusal behind err when err is a JetStream API
// call or a publish to topic, made at asked, that timed out after NATS
// reported that it does not allow this connection to publish to a JetStream
// API subject or to topic: neither waiting longer nor retrying helps, only a
// permission. Any other err is returned as it is.
func (p *PubSub) explainDenied(op, topic string, err error, asked time.Time) error {
	if denied := p.denied(op, topic, err, asked); denied != nil {
		return denied
	}
	return err
}

// denied is the refusal explainDenied finds behind err, or nil.
func (p *PubSub) denied(op, topic string, err error, asked time.Time) error {
	if noReplies := p.replies.problem(); noReplies != nil && (waitedForAck(err) || errors.Is(err, nats.ErrDisconnected)) {
		// Unanswered, or cut by the new connection made to subscribe again.
		return &Error{Op: op, Topic: topic, Kind: KindRejected, Err: fmt.Errorf("%w; a message sent may be stored or not (%v)", noReplies, err)}
	}
	if !waitedForAck(err) {
		return nil
	}
	p.mu.Lock()
	prefix := p.apiPrefix
	p.mu.Unlock()
	subjects := p.denials.since(asked, prefix, topic)
	if len(subjects) == 0 {
		return nil
	}
	quoted := make([]string, len(subjects))
	for i, s := range subjects {
		quoted[i] = strconv.Quote(s)
	}
	return &Error{Op: op, Topic: topic, Kind: KindRejected, Err: fmt.Errorf(
		"NATS does not allow this connection to publish to %s, so JetStream never answered (%v); grant the NATS user publish permission for %s, in the server's authorization or the user's JWT (nsc edit user --allow-pub)",
		strings.Join(quoted, ", "), err, grants(subjects, prefix))}
}

// grants words the publish permissions that refused subjects need: the
// JetStream API's under prefix, and each other subject (a topic, or a
// dead-letter subject) itself, which a permission for the API does not
// cover.
func grants(subjects []string, prefix string) string {
	var api bool
	var out []string
	for _, s := range subjects {
		if strings.HasPrefix(s, prefix) {
			api = true
		} else {
			out = append(out, strconv.Quote(s))
		}
	}
	if api {
		out = append([]string{prefix + "> (or for the API subjects refused)"}, out...)
	}
	return strings.Join(out, " and ")
}
