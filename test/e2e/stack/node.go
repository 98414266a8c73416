// Package stack starts and stops the processes of an end-to-end run: an
// in-process nats-server, the component binary, a real daprd and the tweet
// app. It is shared by the e2e tests and `make demo`.
package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/metadata"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// The demo's stream and the topics the tweet app subscribes to.
const (
	Stream          = "TWITTERCLONE"
	TopicCreated    = "TWITTERCLONE.tweet_created"
	TopicLiked      = "TWITTERCLONE.tweet_liked"
	TopicDeadLetter = "TWITTERCLONE.deadletter"
	TopicRaw        = "TWITTERCLONE.raw"
	TopicBulk       = "TWITTERCLONE.bulk"
	// TopicFailed receives the component's dead letters of TopicLiked, with
	// deadLetterSubject TWITTERCLONE.failed.{topic}.
	TopicFailed = "TWITTERCLONE.failed.TWITTERCLONE.tweet_liked"
	SocketName  = "nats-jetstream"
	PubsubName  = "pubsub"
)

// AppTopics are the topics the tweet app subscribes to.
var AppTopics = []string{TopicCreated, TopicLiked, TopicDeadLetter, TopicRaw, TopicBulk, TopicFailed}

// StartNATS runs nats-server with JetStream in this process, on a random
// loopback port, with its file store in dir.
func StartNATS(dir string) (*server.Server, error) { return StartNATSOn(dir, -1) }

// StartNATSOn is StartNATS on a given port: started again with the port and
// store dir of a server that was shut down, it is that server back from an
// outage, with its streams and consumers.
func StartNATSOn(dir string, port int) (*server.Server, error) {
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true,
	})
	if err != nil {
		return nil, err
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("nats-server did not start within 10s")
	}
	return ns, nil
}

// Config describes one "pod": a component process, a daprd and the app.
type Config struct {
	DaprdBin     string // daprd binary
	ComponentBin string // component binary
	AppBin       string // tweet app binary
	AppID        string
	NATSURL      string
	Dir          string // working directory of this node (sockets, resources)
	// AppDelay makes every event handler of the app wait this long.
	AppDelay time.Duration
	// ComponentMetadata is added to the Component's metadata.
	ComponentMetadata map[string]string
	// DaprdArgs are appended to daprd's flags.
	DaprdArgs []string
	// Echo, if set, receives every process's output as it is written.
	Echo io.Writer
	// StartTimeout bounds each wait for readiness (default 90s).
	StartTimeout time.Duration
	// SharedSocketDir, if set, makes the node use the component process
	// already serving in that folder (as several `dapr run` apps share one
	// component process) instead of starting its own.
	SharedSocketDir string
}

// Node is a running component + daprd + app, like one pod.
type Node struct {
	Config
	SocketDir, ResourcesDir                                    string
	AppPort, HTTPPort, GRPCPort, InternalGRPCPort, MetricsPort int

	Component, Daprd, App *natstest.Proc
	// old holds processes that were stopped, for the logs.
	old []*natstest.Proc
}

// NewNode prepares a node: ports, folders and the Component YAML.
func NewNode(cfg Config) (*Node, error) {
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 90 * time.Second
	}
	n := &Node{Config: cfg, SocketDir: filepath.Join(cfg.Dir, "sockets"), ResourcesDir: filepath.Join(cfg.Dir, "resources")}
	if cfg.SharedSocketDir != "" {
		n.SocketDir = cfg.SharedSocketDir
	}
	for _, d := range []string{n.SocketDir, n.ResourcesDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	for _, p := range []*int{&n.AppPort, &n.HTTPPort, &n.GRPCPort, &n.InternalGRPCPort, &n.MetricsPort} {
		port, err := natstest.FreePort()
		if err != nil {
			return nil, err
		}
		*p = port
	}
	if err := os.WriteFile(filepath.Join(n.ResourcesDir, "pubsub.yaml"), []byte(n.ComponentYAML()), 0o640); err != nil {
		return nil, err
	}
	return n, nil
}

// ComponentYAML is the Component this node's daprd loads.
func (n *Node) ComponentYAML() string {
	md := map[string]string{
		"natsURL":        n.NATSURL,
		"streamName":     Stream,
		"streamSubjects": Stream + ".>",
	}
	for k, v := range n.ComponentMetadata {
		md[k] = v
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: %s\nspec:\n  type: pubsub.%s\n  version: v1\n  metadata:\n", PubsubName, SocketName)
	for _, k := range keys {
		fmt.Fprintf(&b, "    - name: %s\n      value: %q\n", k, md[k])
	}
	return b.String()
}

// Start starts the component, daprd and the app, in that order, and waits
// until daprd is healthy.
func (n *Node) Start(ctx context.Context) error {
	if n.SharedSocketDir == "" {
		if err := n.StartComponent(); err != nil {
			return err
		}
	}
	if err := n.StartDaprd(); err != nil {
		return err
	}
	if err := n.StartApp(); err != nil {
		return err
	}
	return n.WaitDaprdHealthy(ctx)
}

// StartComponent starts the component binary and waits for its socket.
func (n *Node) StartComponent() error {
	if n.Component != nil {
		n.old = append(n.old, n.Component)
	}
	socket := filepath.Join(n.SocketDir, SocketName+".sock")
	p, err := natstest.StartProc(natstest.Spec{
		Name: n.AppID + "/component", Bin: n.ComponentBin, Args: []string{"-drain-timeout", "5s"}, Echo: n.Echo,
		Env: []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + n.SocketDir, "JETSTREAM_SOCKET_NAME=" + SocketName},
	})
	if err != nil {
		return err
	}
	n.Component = p
	return natstest.Await(n.StartTimeout, 20*time.Millisecond, p.Done(), func() error {
		fi, err := os.Stat(socket)
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("%s is not a socket", socket)
		}
		return nil
	})
}

// DaprdFlags are the flags `dapr run` passes to daprd in self-hosted mode,
// minus the control plane: with no --placement-host-address and no
// --scheduler-host-address, daprd 1.14 and 1.18 run without actors and jobs
// and do not try to reach either service.
func (n *Node) DaprdFlags() []string {
	return append([]string{
		"--app-id", n.AppID,
		"--app-port", strconv.Itoa(n.AppPort),
		"--app-protocol", "http",
		"--resources-path", n.ResourcesDir,
		"--dapr-http-port", strconv.Itoa(n.HTTPPort),
		"--dapr-grpc-port", strconv.Itoa(n.GRPCPort),
		"--metrics-port", strconv.Itoa(n.MetricsPort),
		"--dapr-listen-addresses", "127.0.0.1",
		// By default daprd picks the port of its internal (daprd-to-daprd)
		// API itself and listens on every interface; parallel daprds could
		// pick the same port.
		"--dapr-internal-grpc-port", strconv.Itoa(n.InternalGRPCPort),
		"--dapr-internal-grpc-listen-address", "127.0.0.1",
		"--log-level", "info",
	}, n.DaprdArgs...)
}

// StartDaprd starts daprd; it does not wait (daprd waits for the app).
func (n *Node) StartDaprd() error {
	if n.Daprd != nil {
		n.old = append(n.old, n.Daprd)
	}
	p, err := natstest.StartProc(natstest.Spec{
		Name: n.AppID + "/daprd", Bin: n.DaprdBin, Args: n.DaprdFlags(), Echo: n.Echo,
		Env: []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + n.SocketDir},
	})
	if err != nil {
		return err
	}
	n.Daprd = p
	return nil
}

// StartApp starts the tweet app and waits until it listens.
func (n *Node) StartApp() error {
	env := []string{
		"APP_PORT=" + strconv.Itoa(n.AppPort),
		"DAPR_HTTP_PORT=" + strconv.Itoa(n.HTTPPort),
		"PUBSUB_NAME=" + PubsubName,
	}
	if n.AppDelay > 0 {
		env = append(env, "APP_DELAY="+n.AppDelay.String())
	}
	p, err := natstest.StartProc(natstest.Spec{Name: n.AppID + "/app", Bin: n.AppBin, Env: env, Echo: n.Echo})
	if err != nil {
		return err
	}
	n.App = p
	return natstest.Await(n.StartTimeout, 20*time.Millisecond, p.Done(), func() error {
		return expectStatus(context.Background(), http.MethodGet, n.AppURL("/healthz"), nil, http.StatusNoContent)
	})
}

// WaitDaprdHealthy waits for GET /v1.0/healthz to answer 204: daprd has
// loaded its components, reached the app and subscribed.
func (n *Node) WaitDaprdHealthy(ctx context.Context) error {
	if err := natstest.Await(n.StartTimeout, 100*time.Millisecond, n.Daprd.Done(), func() error {
		return expectStatus(ctx, http.MethodGet, n.DaprdURL("/v1.0/healthz"), nil, http.StatusNoContent)
	}); err != nil {
		return fmt.Errorf("daprd %s: %w", n.AppID, err)
	}
	return nil
}

// WaitSubscribed waits until daprd lists the app's subscriptions in its
// metadata and the component created a durable consumer for each topic (named
// <app id>-<topic>, sanitised). A consumer that exists starts at the time its
// subscription was requested, so every message published from now on reaches
// the app.
func (n *Node) WaitSubscribed(ctx context.Context, js jetstream.JetStream, topics ...string) error {
	if len(topics) == 0 {
		topics = AppTopics
	}
	err := natstest.Await(n.StartTimeout, 100*time.Millisecond, n.Daprd.Done(), func() error {
		var md struct {
			Subscriptions []struct {
				Topic string `json:"topic"`
			} `json:"subscriptions"`
		}
		if err := n.getJSON(ctx, n.DaprdURL("/v1.0/metadata"), &md); err != nil {
			return err
		}
		have := map[string]bool{}
		for _, s := range md.Subscriptions {
			have[s.Topic] = true
		}
		for _, t := range topics {
			if !have[t] {
				return fmt.Errorf("daprd does not list a subscription to %s yet", t)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("daprd %s: %w", n.AppID, err)
	}
	return WaitConsumers(ctx, js, n.StartTimeout, n.AppID, topics...)
}

// ConsumerName is the durable the component uses for appID's subscription to
// topic: SanitizeName(<consumerID>, <topic>), as daprd sets consumerID to the
// app id.
func ConsumerName(appID, topic string) string { return metadata.SanitizeName(appID, topic) }

// WaitConsumers waits until the durable of appID exists for every topic.
func WaitConsumers(ctx context.Context, js jetstream.JetStream, timeout time.Duration, appID string, topics ...string) error {
	return natstest.Await(timeout, 100*time.Millisecond, nil, func() error {
		for _, t := range topics {
			c, err := js.Consumer(ctx, Stream, ConsumerName(appID, t))
			if err != nil {
				return fmt.Errorf("consumer %s for %s: %w", ConsumerName(appID, t), t, err)
			}
			if fs := c.CachedInfo().Config.FilterSubject; fs != t {
				return fmt.Errorf("consumer %s filters %q, want %q", c.CachedInfo().Name, fs, t)
			}
		}
		return nil
	})
}

// StopDaprd stops daprd with SIGTERM (killing it after grace).
func (n *Node) StopDaprd(grace time.Duration) error { return n.Daprd.Stop(grace) }

// StopComponent stops the component with SIGTERM (killing it after grace).
func (n *Node) StopComponent(grace time.Duration) error {
	return n.Component.Stop(grace)
}

// Close stops everything: app, daprd, then the component.
func (n *Node) Close() {
	for _, p := range []*natstest.Proc{n.App, n.Daprd, n.Component} {
		if p != nil {
			_ = p.Stop(10 * time.Second)
		}
	}
}

// Logs returns the output of every process of the node, each cut to its last
// lines lines.
func (n *Node) Logs(lines int) string {
	var b strings.Builder
	for _, p := range append(append([]*natstest.Proc{}, n.old...), n.Component, n.Daprd, n.App) {
		if p == nil {
			continue
		}
		fmt.Fprintf(&b, "===== %s =====\n%s\n", p.Name, p.Tail(lines))
	}
	return b.String()
}

// FullLogs returns every process's whole output, by process.
func (n *Node) FullLogs() map[string]string {
	out := map[string]string{}
	for i, p := range append(append([]*natstest.Proc{}, n.old...), n.Component, n.Daprd, n.App) {
		if p != nil {
			out[fmt.Sprintf("%02d-%s", i, strings.ReplaceAll(p.Name, "/", "-"))] = p.Output()
		}
	}
	return out
}

// AppURL is a URL of the app.
func (n *Node) AppURL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(n.AppPort) + path
}

// DaprdURL is a URL of daprd's HTTP API.
func (n *Node) DaprdURL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(n.HTTPPort) + path
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// Do sends a request with a JSON body (nil for none) and returns the status
// and the response body.
func Do(ctx context.Context, method, url string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			r = bytes.NewReader(b)
		default:
			j, err := json.Marshal(body)
			if err != nil {
				return 0, nil, err
			}
			r = bytes.NewReader(j)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func expectStatus(ctx context.Context, method, url string, body any, want int) error {
	status, b, err := Do(ctx, method, url, body)
	if err != nil {
		return err
	}
	if status != want {
		return fmt.Errorf("%s %s: status %d, want %d: %s", method, url, status, want, b)
	}
	return nil
}

func (n *Node) getJSON(ctx context.Context, url string, v any) error {
	status, b, err := Do(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("GET %s: status %d: %s", url, status, b)
	}
	return json.Unmarshal(b, v)
}

// Tweet posts a tweet through the app. query (such as
// "metadata.ttlInSeconds=1") is passed on to daprd. It returns the tweet's
// id, or an error with the app's answer.
func (n *Node) Tweet(ctx context.Context, text, behavior, query string) (string, error) {
	u := n.AppURL("/tweets")
	if query != "" {
		u += "?" + query
	}
	return n.post(ctx, u, map[string]string{"text": text, "behavior": behavior})
}

// Like posts a like of tweet id through the app.
func (n *Node) Like(ctx context.Context, id, behavior string) error {
	_, err := n.post(ctx, n.AppURL("/tweets/"+id+"/likes"), map[string]string{"behavior": behavior})
	return err
}

func (n *Node) post(ctx context.Context, url string, body any) (string, error) {
	status, b, err := Do(ctx, http.MethodPost, url, body)
	if err != nil {
		return "", err
	}
	if status != http.StatusCreated {
		return "", fmt.Errorf("POST %s: status %d: %s", url, status, b)
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return "", err
	}
	return out.ID, nil
}

// Record is one delivery the app recorded (see the tweet app).
type Record struct {
	Route     string          `json:"route"`
	Topic     string          `json:"topic"`
	ID        string          `json:"id"`
	Attempt   int             `json:"attempt"`
	Data      json.RawMessage `json:"data"`
	Event     json.RawMessage `json:"event"`
	Raw       bool            `json:"raw"`
	BatchSize int             `json:"batchSize"`
	Time      time.Time       `json:"time"`
	Status    string          `json:"status"`
	// TraceParent is the traceparent header daprd sent with the event.
	TraceParent string `json:"traceparent"`
	// DeadLetter holds the Dead-Letter-* metadata daprd sent, keyed in lower
	// case.
	DeadLetter map[string]string `json:"deadLetter"`
}

// TweetData is the data of the app's events.
type TweetData struct {
	ID       string `json:"id"`
	Text     string `json:"text"`
	Behavior string `json:"behavior"`
}

// Tweet decodes the record's data as the app's event data.
func (r Record) Tweet() TweetData {
	var t TweetData
	_ = json.Unmarshal(r.Data, &t)
	return t
}

// Received is what the app recorded.
type Received struct {
	Events  []Record `json:"events"`
	Batches []int    `json:"batches"`
}

// Received fetches what the app has received so far.
func (n *Node) Received(ctx context.Context) (Received, error) {
	var r Received
	err := n.getJSON(ctx, n.AppURL("/received"), &r)
	return r, err
}
