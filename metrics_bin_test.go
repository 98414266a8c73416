package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// TestMetricsEndpointAndJSONLogs runs the binary with the metrics address
// and JSON logs set by environment: the endpoint labels each instance with
// its Component name and its daprd, /readyz answers, and every log line is
// JSON, with the component, topic and consumer as fields for a subscription.
func TestMetricsEndpointAndJSONLogs(t *testing.T) {
	ns := natstest.Start(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(natstest.FreePortT(t)))

	sockets := t.TempDir()
	socket := filepath.Join(sockets, "nats-js-metrics.sock")
	env := []string{"DAPR_COMPONENTS_SOCKETS_FOLDER=" + sockets, "JETSTREAM_METRICS_ADDR=" + addr, "JETSTREAM_LOG_AS_JSON=true"}
	p := startBinaryEnv(t, env, socket, "-socket-name", "nats-js-metrics")
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := proto.NewPubSubClient(conn)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "x-component-instance", "pubsub")
	_, err = client.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: map[string]string{
		"natsURL": ns.ClientURL(), "consumerID": "app",
	}}})
	require.NoError(t, err)
	stream, err := client.PullMessages(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "metered"}}))
	_, err = client.Publish(ctx, &proto.PublishRequest{Topic: "metered", Data: []byte("m")})
	require.NoError(t, err)
	m, err := stream.Recv()
	require.NoError(t, err)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{AckMessageId: m.GetId()}))

	get := func(path string) (int, string) { return httpGet(addr, path) }
	code, _ := get("/readyz")
	assert.Equal(t, http.StatusOK, code)
	me := strconv.Itoa(os.Getpid())
	var acked float64
	require.Eventually(t, func() bool {
		code, body := get("/metrics")
		if code != http.StatusOK {
			return false
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			return false
		}
		for _, s := range fams["jetstream_pubsub_acks_total"].GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["instance"] == "pubsub" && labels["daprd"] == me && labels["topic"] == "metered" && labels["consumer"] == "app-metered" {
				acked = s.GetCounter().GetValue()
			}
		}
		return acked == 1
	}, 10*time.Second, 50*time.Millisecond, "no ack counted for instance pubsub of daprd %s", me)

	lines := completeLines(p.Output())
	require.NotEmpty(t, lines)
	var sawSubscription bool
	for _, line := range lines {
		var entry map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &entry), "not JSON: %s", line)
		if msg, _ := entry["msg"].(string); strings.Contains(msg, "subscribed to topic") && strings.Contains(msg, "with consumer") {
			sawSubscription = true
			assert.Equal(t, "pubsub", entry["component"], line)
			assert.Equal(t, "metered", entry["topic"], line)
			assert.Equal(t, "app-metered", entry["consumer"], line)
			assert.Equal(t, me, fmt.Sprint(entry["daprd"]), line)
		}
	}
	assert.True(t, sawSubscription, "no log line about the subscription:\n%s", strings.Join(lines, "\n"))
}

// completeLines splits out into lines, leaving out a last line the process
// is still writing.
func completeLines(out string) []string {
	end := strings.LastIndexByte(out, '\n')
	if end < 0 {
		return nil
	}
	return strings.Split(out[:end], "\n")
}

// httpGet is the status and body of GET path on addr, or 0 and the error.
func httpGet(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsServedWhileDraining sends SIGTERM while daprd holds a message:
// for as long as the process drains, /healthz and /metrics still answer, so
// that the messages it gives back at shutdown
// (jetstream_pubsub_given_back_total{reason="shutdown"}) can be scraped.
func TestMetricsServedWhileDraining(t *testing.T) {
	ns := natstest.Start(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(natstest.FreePortT(t)))
	sockets := t.TempDir()
	socket := filepath.Join(sockets, "nats-js-drainmetrics.sock")
	p := startBinary(t, sockets, socket, "-socket-name", "nats-js-drainmetrics", "-metrics-addr", addr, "-drain-timeout", "5s")
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := proto.NewPubSubClient(conn)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), "x-component-instance", "pubsub")
	_, err = client.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: map[string]string{
		"natsURL": ns.ClientURL(), "consumerID": "app",
	}}})
	require.NoError(t, err)
	stream, err := client.PullMessages(ctx)
	require.NoError(t, err)
	require.NoError(t, stream.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "drainmetered"}}))
	_, err = client.Publish(ctx, &proto.PublishRequest{Topic: "drainmetered", Data: []byte("m")})
	require.NoError(t, err)
	_, err = stream.Recv() // held, never acknowledged: the drain lasts its 5 s
	require.NoError(t, err)
	code, _ := httpGet(addr, "/healthz")
	require.Equal(t, http.StatusOK, code)

	require.NoError(t, p.Signal(syscall.SIGTERM))
	_, err = p.WaitForOutput(10*time.Second, regexp.MustCompile("shutting down: pausing delivery"))
	require.NoError(t, err, "the drain did not begin")
	code, body := httpGet(addr, "/healthz")
	require.True(t, p.Running(), "the process exited before the check")
	assert.Equal(t, http.StatusOK, code, "/healthz while the process drains: %s", body)
	code, body = httpGet(addr, "/metrics")
	assert.Equal(t, http.StatusOK, code, "/metrics while the process drains: %s", body)
}
