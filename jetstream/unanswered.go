package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// apiRecheckEvery is how often a JetStream API request that no server
// answered is made again: the problem ends with the first answer, also for
// an app that makes no call meanwhile, such as one whose pod the problem
// took out of service.
const apiRecheckEvery = 5 * time.Second

// jetStreamAPI follows whether any server takes this connection's JetStream
// API requests. The connection to NATS may be up while none does: a wrong
// domain or apiPrefix, or a leaf node whose hub is away. nats.go then fails
// each request at once with "no responders", and nothing else tells probes:
// an app that only publishes would look ready while every publish fails.
type jetStreamAPI struct {
	// why says where requests go and the fix (see noJetStream).
	why string

	mu     sync.Mutex
	since  time.Time                       // when requests began to go unanswered; zero while answered
	again  func(ctx context.Context) error // makes the last unanswered request again
	timer  *time.Timer                     // the next time it is made, while unanswered
	closed bool
}

func newJetStreamAPI(why string) *jetStreamAPI {
	return &jetStreamAPI{why: why}
}

// heard records the outcome of a JetStream API request: no server answered
// it (err is "no responders"), or one did (err is nil, or an error that
// came as an answer). A request that ran out of time proves nothing either
// way (a cluster electing its leader, say). again makes the request again:
// it is made every apiRecheckEvery while unanswered. It is the very request
// that went unanswered, rather than one for the account's information,
// which a NATS user with the least permissions may not be allowed to make.
func (a *jetStreamAPI) heard(err error, again func(context.Context) error) {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		a.unanswered(again)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, nats.ErrTimeout):
	default:
		a.answered()
	}
}

// unanswered records that a request got no responders, and has it made again
// after apiRecheckEvery.
func (a *jetStreamAPI) unanswered(again func(context.Context) error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.since.IsZero() {
		a.since = time.Now()
	}
	a.again = again
	if !a.closed && a.timer == nil {
		a.timer = time.AfterFunc(apiRecheckEvery, a.recheck)
	}
}

// answered records that a request was answered.
func (a *jetStreamAPI) answered() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.since, a.again = time.Time{}, nil
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// recheck makes the last unanswered request again, and again after
// apiRecheckEvery while it gets no answer.
func (a *jetStreamAPI) recheck() {
	a.mu.Lock()
	a.timer = nil
	again, closed := a.again, a.closed
	a.mu.Unlock()
	if closed || again == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	a.heard(again(ctx), again)
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed && !a.since.IsZero() && a.timer == nil {
		a.timer = time.AfterFunc(apiRecheckEvery, a.recheck)
	}
}

// close stops the rechecks.
func (a *jetStreamAPI) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// problem says that no server answers the JetStream API, since when, where
// the requests go and the fix; nil while one does, or before Init.
func (a *jetStreamAPI) problem() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.since.IsZero() {
		return nil
	}
	return fmt.Errorf("%s (since %s; asked again every %s)", a.why, a.since.UTC().Format(time.RFC3339), apiRecheckEvery)
}
