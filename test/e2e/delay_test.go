//go:build e2e

package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestDelayedTweet: delayed delivery through daprd's HTTP publish API. A
// tweet published with deliverAfter, and one with scheduledSendTime, reach
// the app no earlier than their time and within a second after it, while a
// tweet published after them without a delay arrives at once.
func TestDelayedTweet(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		n := e.startNode("delayed")
		prefix := tag(t)

		type delayed struct {
			text       string
			earliest   time.Time // before the publish was sent, plus the delay
			latest     time.Time // after it was stored, plus the delay
			delivered  time.Time
			deliveries int
		}
		var tweets []*delayed
		sent := time.Now()
		if _, err := n.Tweet(e.ctx, prefix+" after 3s", "", "metadata.deliverAfter=3s"); err != nil {
			t.Fatal(err)
		}
		tweets = append(tweets, &delayed{text: prefix + " after 3s", earliest: sent.Add(3 * time.Second), latest: time.Now().Add(3 * time.Second)})
		at := time.Now().Add(2 * time.Second).UTC()
		if _, err := n.Tweet(e.ctx, prefix+" at a time", "", "metadata.scheduledSendTime="+url.QueryEscape(at.Format(time.RFC3339Nano))); err != nil {
			t.Fatal(err)
		}
		tweets = append(tweets, &delayed{text: prefix + " at a time", earliest: at, latest: at})
		if _, err := n.Tweet(e.ctx, prefix+" now", "", ""); err != nil {
			t.Fatal(err)
		}

		mine := func(r stack.Record) bool { return strings.HasPrefix(r.Tweet().Text, prefix) }
		waitUntil(t, 30*time.Second, func() string {
			if got := filter(received(t, n).Events, stack.TopicCreated, mine); len(got) < 3 {
				return fmt.Sprintf("the app received %d of the 3 tweets", len(got))
			}
			return ""
		})
		time.Sleep(1500 * time.Millisecond) // a schedule that fired twice would show up now
		var now time.Time
		for _, r := range filter(received(t, n).Events, stack.TopicCreated, mine) {
			if r.Tweet().Text == prefix+" now" {
				now = r.Time
			}
			for _, d := range tweets {
				if r.Tweet().Text == d.text {
					d.delivered = r.Time
					d.deliveries++
				}
			}
		}
		for _, d := range tweets {
			if d.deliveries != 1 {
				t.Errorf("%q was delivered %d times, want once", d.text, d.deliveries)
			}
			if d.delivered.Before(d.earliest) {
				t.Errorf("%q was delivered %s before its time", d.text, d.earliest.Sub(d.delivered))
			}
			if late := d.delivered.Sub(d.latest); late > time.Second {
				t.Errorf("%q was delivered %s after its time, want within 1s", d.text, late)
			}
			if !now.Before(d.delivered) {
				t.Errorf("%q was delivered before the tweet published after it without a delay", d.text)
			}
			t.Logf("daprd %s: %q delivered %s after the earliest time it was due", v, d.text, d.delivered.Sub(d.earliest).Round(time.Millisecond))
		}
	})
}
