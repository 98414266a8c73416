//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

// TestDeadLetterSubject: a like whose handler always fails, with maxDeliver
// 3 and deadLetterSubject TWITTERCLONE.failed.{topic}, is handled three
// times; then it reaches the app's subscription to the dead-letter subject,
// with the Dead-Letter-* metadata naming where it came from and why it
// failed, and JetStream reports the original terminated.
func TestDeadLetterSubject(t *testing.T) {
	eachVersion(t, func(t *testing.T, v string) {
		e := newEnv(t, v)
		terminated := make(chan *nats.Msg, 10)
		sub, err := e.js.Conn().ChanSubscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>", terminated)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
		n := e.startNode("deadletters", withMetadata(map[string]string{"maxDeliver": "3", "deadLetterSubject": "TWITTERCLONE.failed.{topic}"}))

		id, err := n.Tweet(e.ctx, tag(t)+" liked in vain", "", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Like(e.ctx, id, "fail-always"); err != nil {
			t.Fatal(err)
		}
		byID := func(r stack.Record) bool { return r.Tweet().ID == id }
		var dead []stack.Record
		waitUntil(t, 60*time.Second, func() string {
			if dead = filter(received(t, n).Events, stack.TopicFailed, byID); len(dead) == 0 {
				return fmt.Sprintf("the like has not reached %s; handled %d times", stack.TopicFailed, len(filter(received(t, n).Events, stack.TopicLiked, byID)))
			}
			return ""
		})
		if got := filter(received(t, n).Events, stack.TopicLiked, byID); len(got) != 3 {
			t.Errorf("the like was handled %d times, want 3 (maxDeliver)", len(got))
		}
		md := dead[0].DeadLetter
		t.Logf("daprd %s delivered the dead letter with %v", v, md)
		for k, want := range map[string]string{
			"dead-letter-subject":    stack.TopicLiked,
			"dead-letter-stream":     stack.Stream,
			"dead-letter-deliveries": "3",
			"dead-letter-consumer":   stack.ConsumerName("deadletters", stack.TopicLiked),
		} {
			if md[k] != want {
				t.Errorf("metadata %s = %q, want %q", k, md[k], want)
			}
		}
		if md["dead-letter-error"] == "" {
			t.Errorf("the dead letter does not say why the handler failed: %v", md)
		}

		select {
		case adv := <-terminated:
			var term struct {
				Stream   string `json:"stream"`
				Consumer string `json:"consumer"`
				Seq      uint64 `json:"stream_seq"`
			}
			if err := json.Unmarshal(adv.Data, &term); err != nil {
				t.Fatal(err)
			}
			if term.Stream != stack.Stream || strconv.FormatUint(term.Seq, 10) != md["dead-letter-sequence"] {
				t.Errorf("JetStream terminated %+v, want %s sequence %s", term, stack.Stream, md["dead-letter-sequence"])
			}
		case <-time.After(10 * time.Second):
			t.Error("JetStream reported no terminated message")
		}
	})
}
