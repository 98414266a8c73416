// Command demo runs the tweet demo end to end for a person to watch: an
// in-process nats-server with JetStream, the component, a real daprd and the
// tweet app. It posts a few tweets and likes, prints what was published and
// what the app received, then stops everything. `make demo` builds what it
// needs and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"
)

func main() {
	daprd := flag.String("daprd", "", "daprd binary (built by test/daprd/build.sh)")
	component := flag.String("component", "bin/dapr-nats-jetstream", "component binary")
	app := flag.String("app", "", "tweet app binary (go build ./test/e2e/tweetapp)")
	verbose := flag.Bool("v", false, "show the output of nats-jetstream, daprd and the app")
	flag.Parse()
	if *daprd == "" || *app == "" {
		fmt.Fprintln(os.Stderr, "usage: demo -daprd PATH -app PATH [-component PATH] [-v]")
		os.Exit(2)
	}
	if err := run(*daprd, *component, *app, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(daprdBin, componentBin, appBin string, verbose bool) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "tweet-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ns, err := stack.StartNATS(dir + "/nats")
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	fmt.Printf("1. NATS JetStream is listening on %s\n", ns.ClientURL())

	var echo io.Writer
	if verbose {
		echo = os.Stdout
	}
	n, err := stack.NewNode(stack.Config{
		DaprdBin: daprdBin, ComponentBin: componentBin, AppBin: appBin,
		AppID: "tweets", NATSURL: ns.ClientURL(), Dir: dir + "/node", Echo: echo,
		StartTimeout: 60 * time.Second,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("6. Stopping the app, daprd and the component...")
		n.Close()
		if err != nil && !verbose {
			fmt.Fprintf(os.Stderr, "--- process output ---\n%s\n", n.Logs(60))
		}
	}()
	fmt.Printf("2. Component YAML (%s/pubsub.yaml):\n%s", n.ResourcesDir, indent(n.ComponentYAML()))
	fmt.Printf("3. Starting the component, then daprd (app id tweets, HTTP port %d), then the app (port %d)...\n", n.HTTPPort, n.AppPort)
	start := time.Now()
	if err := n.Start(ctx); err != nil {
		return err
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if err := n.WaitSubscribed(ctx, js); err != nil {
		return err
	}
	fmt.Printf("   ready in %s: daprd subscribed the app to %v\n", time.Since(start).Round(time.Millisecond), stack.AppTopics)

	fmt.Println("4. Publishing through the app (POST /tweets, POST /tweets/{id}/likes):")
	texts := []string{"Hello from Dapr and NATS JetStream!", "Durable consumers survive restarts.", "Replicas of one app share the work."}
	want := 0
	for i, text := range texts {
		id, err := n.Tweet(ctx, text, "", "")
		if err != nil {
			return err
		}
		fmt.Printf("   published %s  {id: %s, text: %q}\n", stack.TopicCreated, id, text)
		want++
		if i < 2 {
			if err := n.Like(ctx, id, ""); err != nil {
				return err
			}
			fmt.Printf("   published %s    {id: %s}\n", stack.TopicLiked, id)
			want++
		}
	}

	var got stack.Received
	deadline := time.Now().Add(30 * time.Second)
	for {
		if got, err = n.Received(ctx); err != nil {
			return err
		}
		if len(got.Events) >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the app received %d of %d events within 30s", len(got.Events), want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	sort.SliceStable(got.Events, func(i, j int) bool { return got.Events[i].Time.Before(got.Events[j].Time) })
	fmt.Printf("5. The app received %d CloudEvents from daprd:\n", len(got.Events))
	for _, r := range got.Events {
		fmt.Printf("   %s  %-28s cloudevent id %s  data %s -> %s\n", r.Time.Format("15:04:05.000"), r.Topic, r.ID, r.Data, r.Status)
	}
	st, err := js.Stream(ctx, stack.Stream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("   stream %s holds %d messages; durable consumers: ", stack.Stream, info.State.Msgs)
	names := st.ConsumerNames(ctx)
	for name := range names.Name() {
		fmt.Printf("%s ", name)
	}
	fmt.Println()
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("   " + line + "\n")
	}
	return b.String()
}
