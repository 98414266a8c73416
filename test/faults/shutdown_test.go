//go:build faults

package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// TestFaultSIGTERMDaprdNotReading sends SIGTERM to the component while a
// daprd holds its PullMessages stream open but has stopped reading, with
// 64 KiB messages, so that gRPC's flow-control window is full and the
// component is blocked sending. It exits within the drain bound plus gRPC's
// stop grace, and every message it held goes back to JetStream: none is left
// waiting for the ack wait.
func TestFaultSIGTERMDaprdNotReading(t *testing.T) {
	const (
		topic    = "faults.notreading"
		total    = 200
		size     = 64 << 10
		drain    = 2 * time.Second
		grace    = 5 * time.Second // the gRPC server's stop grace
		instance = "pubsub"
		consumer = "notreading"
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := procStartNATS(t, "nats-notreading", "-sd", t.TempDir())
	comp := procNewComponent(t, faultSocketDir(t), "faults-notreading", "-drain-timeout", drain.String())
	comp.startServing(t, 30*time.Second)
	c := faultGRPC(t, comp.socket)
	props := map[string]string{"natsURL": ns.url(), "consumerID": consumer, "ackWait": "60s"}
	if err := faultGRPCInit(ctx, c, instance, props); err != nil {
		t.Fatalf("Init: %v", err)
	}

	// A daprd that asks for the topic and then never reads again.
	sctx, scancel := context.WithCancel(faultInstance(ctx, instance))
	defer scancel()
	stream, err := c.PullMessages(sctx)
	if err != nil {
		t.Fatalf("PullMessages: %v", err)
	}
	if err := stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: topic, Metadata: map[string]string{"maxInFlight": "64"}}}); err != nil {
		t.Fatalf("topic frame: %v", err)
	}
	_, js := procClient(t, ns.url())
	durable := metadata.SanitizeName(consumer, topic)
	waitFor := func(what string, within time.Duration, cond func() (bool, string)) {
		t.Helper()
		natstest.AwaitT(t, within, what, func() error {
			if ok, state := cond(); !ok {
				return errors.New(state)
			}
			return nil
		})
	}
	consumerState := func() (pending, ackPending int, err error) {
		name, err := js.StreamNameBySubject(ctx, topic)
		if err != nil {
			return 0, 0, err
		}
		cons, err := js.Consumer(ctx, name, durable)
		if err != nil {
			return 0, 0, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, 0, err
		}
		return int(info.NumPending), info.NumAckPending, nil
	}
	waitFor("the durable exists", 20*time.Second, func() (bool, string) {
		_, _, err := consumerState()
		return err == nil, fmt.Sprint(err)
	})

	payload := bytes.Repeat([]byte("x"), size)
	for i := range total {
		pctx, pcancel := context.WithTimeout(faultInstance(ctx, instance), 10*time.Second)
		_, err := c.Publish(pctx, &proto.PublishRequest{Topic: topic, Data: payload, ContentType: "application/octet-stream",
			Metadata: map[string]string{"msgId": "notreading-" + strconv.Itoa(i)}})
		pcancel()
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	// The component holds a full window it cannot send.
	var held int
	waitFor("the component holds messages daprd does not read", 20*time.Second, func() (bool, string) {
		_, ack, err := consumerState()
		held = ack
		return err == nil && ack >= 32, fmt.Sprintf("%d unacknowledged, %v", ack, err)
	})

	sigAt := time.Now()
	if err := comp.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	bound := drain + grace + 2*time.Second
	exited, err := comp.Wait(bound + 10*time.Second)
	took := time.Since(sigAt)
	if !exited {
		t.Fatalf("the component still runs %s after SIGTERM while daprd does not read", bound+10*time.Second)
	}
	if err != nil {
		t.Errorf("the component exited with %v, want status 0", err)
	}
	if took > bound {
		t.Errorf("exit took %s, more than the drain bound %s plus the stop grace %s (and 2 s slack)", took, drain, grace)
	}
	// What the component held is available again at once: a plain pull on
	// the durable gets every message well within the 60 s ack wait.
	name, err := js.StreamNameBySubject(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, name, durable)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	fetchStart := time.Now()
	for len(got) < total && time.Since(fetchStart) < 15*time.Second {
		batch, err := cons.Fetch(total, natsjs.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatalf("fetch after exit: %v", err)
		}
		for m := range batch.Messages() {
			got[m.Headers().Get("Nats-Msg-Id")] = true
			_ = m.Ack()
		}
	}
	fetched := time.Since(fetchStart)
	if len(got) != total {
		t.Errorf("after exit a new subscriber got %d of %d messages within %s: what the component held did not go back to JetStream", len(got), total, fetched.Round(time.Millisecond))
	}
	t.Logf("FAULT daprd-not-reading: %d messages of %d KiB held, exit 0 after %s (drain %s), all %d at a new subscriber within %s of exit (ackWait 60s)",
		held, size>>10, took.Round(10*time.Millisecond), drain, len(got), fetched.Round(10*time.Millisecond))
}

// frozenNATSShutdown starts nats-server and the component with drain, and
// for each of instances Components opens a daprd stream that holds every
// message it gets (held of them), then freezes nats-server with SIGSTOP: its
// TCP connections stay open, but nothing answers, as when NATS hangs or the
// network drops what it sends. Each instance then has a publish waiting for a
// PubAck that never comes. nats-server goes on at the end of the test.
func frozenNATSShutdown(t *testing.T, ctx context.Context, name string, instances int, drain time.Duration) *procComponent {
	t.Helper()
	const held = 5
	ns := procStartNATS(t, "nats-"+name, "-sd", t.TempDir())
	comp := procNewComponent(t, faultSocketDir(t), "faults-"+name, "-drain-timeout", drain.String())
	comp.startServing(t, 30*time.Second)
	c := faultGRPC(t, comp.socket)
	stats := &faultStats{}
	for n := range instances {
		instance, topic := "pubsub"+strconv.Itoa(n), "faults."+name+"."+strconv.Itoa(n)
		if err := faultGRPCInit(ctx, c, instance, map[string]string{"natsURL": ns.url(), "consumerID": name, "ackWait": "60s"}); err != nil {
			t.Fatalf("Init %s: %v", instance, err)
		}
		l := newFaultLedger(topic, held+1)
		pull := faultStartPull(t, ctx, c, instance, topic, nil, l, func() bool { return false })
		faultWaitConsumer(t, ns.url(), name, topic)
		for i := range held {
			if err := faultGRPCPublish(ctx, c, instance, topic, l, i, stats); err != nil {
				t.Fatalf("publish %d to %s: %v", i, topic, err)
			}
		}
		natstest.AwaitT(t, 20*time.Second, "daprd holds the messages of "+topic, func() error {
			if n := pull.heldCount(); n < held {
				return fmt.Errorf("%d held", n)
			}
			return nil
		})
	}
	if err := ns.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP nats-server: %v", err)
	}
	t.Cleanup(func() { _ = ns.Signal(syscall.SIGCONT) })
	for n := range instances {
		go func() {
			pctx, cancel := context.WithTimeout(faultInstance(ctx, "pubsub"+strconv.Itoa(n)), time.Minute)
			defer cancel()
			_, _ = c.Publish(pctx, &proto.PublishRequest{Topic: "faults." + name + "." + strconv.Itoa(n), Data: []byte("unanswered")})
		}()
	}
	return comp
}

// TestFaultSIGTERMNATSFrozen sends SIGTERM to the component while NATS
// accepts its bytes but answers nothing, daprd holds unacknowledged
// messages, and a publish waits for its PubAck, for one Component and for
// several: the component still exits within the drain bound plus gRPC's stop
// grace, as it promises whatever the peers do (and as
// terminationGracePeriodSeconds in deploy/ relies on), a bound for the
// process, not for each instance.
func TestFaultSIGTERMNATSFrozen(t *testing.T) {
	const (
		drain = 2 * time.Second
		grace = 5 * time.Second // the gRPC server's stop grace
	)
	for _, instances := range []int{1, 3} {
		t.Run(strconv.Itoa(instances), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			comp := frozenNATSShutdown(t, ctx, "frozen"+strconv.Itoa(instances), instances, drain)
			sigAt := time.Now()
			if err := comp.Signal(syscall.SIGTERM); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			bound := drain + grace + 2*time.Second
			exited, err := comp.Wait(2 * time.Minute)
			took := time.Since(sigAt)
			if !exited {
				t.Fatalf("the component still runs 2m after SIGTERM while NATS does not answer")
			}
			if err != nil {
				t.Errorf("the component exited with %v, want status 0", err)
			}
			if took > bound {
				t.Errorf("with %d Components, exit took %s after SIGTERM while NATS does not answer, more than the drain bound %s plus the stop grace %s (and 2 s slack)", instances, took.Round(10*time.Millisecond), drain, grace)
			}
		})
	}
}

// TestFaultSecondSignalForcesExit sends SIGTERM while NATS answers nothing,
// so that the graceful shutdown hangs, then SIGINT (an operator's Ctrl-C, or
// a supervisor giving up): the second signal ends the process at once.
func TestFaultSecondSignalForcesExit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	comp := frozenNATSShutdown(t, ctx, "second", 1, 2*time.Second)
	if err := comp.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if _, err := comp.WaitForOutput(10*time.Second, regexp.MustCompile("shutting down: pausing delivery")); err != nil {
		t.Fatalf("the drain did not begin: %v", err)
	}
	secondAt := time.Now()
	if err := comp.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT: %v", err)
	}
	exited, _ := comp.Wait(2 * time.Minute)
	took := time.Since(secondAt)
	if !exited {
		t.Fatalf("the component still runs 2m after a second signal")
	}
	if took > 2*time.Second {
		t.Errorf("exit took %s after a second signal during the drain; it should end the process at once", took.Round(10*time.Millisecond))
	}
}
