package metadata

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	yaml "go.yaml.in/yaml/v3"
)

const testURL = "nats://localhost:4222"

// with returns a component's metadata: a valid natsURL plus extra.
func with(extra map[string]string) map[string]string {
	m := map[string]string{"natsURL": testURL}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

func mustParse(t *testing.T, props map[string]string) *Config {
	t.Helper()
	cfg, err := Parse(props)
	require.NoError(t, err)
	require.NotNil(t, cfg)
	return cfg
}

// leaves flattens joined and wrapped errors into the FieldErrors and
// ConflictErrors (or other errors) they are made of.
func leaves(err error) []error {
	switch e := err.(type) {
	case nil:
		return nil
	case *FieldError, *ConflictError:
		return []error{err}
	case interface{ Unwrap() []error }:
		var out []error
		for _, x := range e.Unwrap() {
			out = append(out, leaves(x)...)
		}
		return out
	case interface{ Unwrap() error }:
		if u := e.Unwrap(); u != nil && u != ErrInvalid {
			return leaves(u)
		}
	}
	return []error{err}
}

func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	for _, l := range leaves(err) {
		if fe, ok := l.(*FieldError); ok {
			out = append(out, fe)
		}
	}
	return out
}

func conflicts(err error) []*ConflictError {
	var out []*ConflictError
	for _, l := range leaves(err) {
		if ce, ok := l.(*ConflictError); ok {
			out = append(out, ce)
		}
	}
	return out
}

// requireFieldErr checks that err wraps ErrInvalid and holds a FieldError for
// field whose problem contains problem and whose accepted text contains
// accepted, and that the message names the field and the accepted text.
func requireFieldErr(t *testing.T, err error, field, problem, accepted string) *FieldError {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, ErrInvalid)
	var found *FieldError
	for _, fe := range fieldErrors(err) {
		if fe.Field == field {
			found = fe
			break
		}
	}
	require.NotNilf(t, found, "no FieldError for %q in: %v", field, err)
	assert.Contains(t, found.Problem, problem)
	assert.Contains(t, found.Accepted, accepted)
	msg := err.Error()
	assert.Contains(t, msg, fmt.Sprintf("metadata field %q", field))
	if found.Accepted != "" {
		assert.Contains(t, msg, "accepted: "+found.Accepted)
	}
	assert.ErrorIs(t, found, ErrInvalid)
	return found
}

// requireConflict checks that err wraps ErrInvalid and holds a ConflictError
// naming exactly fields, and that the message names each of them.
func requireConflict(t *testing.T, err error, fields ...string) *ConflictError {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, ErrInvalid)
	var found *ConflictError
	for _, ce := range conflicts(err) {
		if slices.Equal(ce.Fields, fields) {
			found = ce
			break
		}
	}
	require.NotNilf(t, found, "no ConflictError for %q in: %v", fields, err)
	msg := err.Error()
	for _, f := range fields {
		assert.Contains(t, msg, fmt.Sprintf("%q", f))
	}
	assert.NotEmpty(t, found.Problem)
	assert.NotEmpty(t, found.Fix)
	assert.ErrorIs(t, found, ErrInvalid)
	return found
}

// propertyTags lists the mapstructure tags of Properties, with their types.
func propertyTags() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range reflect.TypeFor[Properties]().Fields() {
		out[f.Tag.Get("mapstructure")] = f.Type
	}
	return out
}

func TestParseDefaults(t *testing.T) {
	cfg := mustParse(t, map[string]string{"natsURL": testURL})

	assert.Equal(t, Connection{
		URL:            testURL,
		Name:           "dapr-nats-jetstream",
		ReconnectWait:  2 * time.Second,
		ConnectTimeout: 5 * time.Second,
	}, cfg.Connection)
	assert.Equal(t, Stream{
		AutoProvision:     true,
		Storage:           jetstream.FileStorage,
		Replicas:          1,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		DuplicateWindow:   2 * time.Minute,
		MaxMsgSize:        -1,
		MaxMsgsPerSubject: -1,
	}, cfg.Stream)
	assert.Equal(t, Consumer{
		StartAtSubscribe: true,
		DeliverPolicy:    jetstream.DeliverByStartTimePolicy,
		AckPolicy:        jetstream.AckExplicitPolicy,
		AckWait:          30 * time.Second,
		MaxDeliver:       -1,
		MaxAckPending:    1000,
		MaxInFlight:      100,
	}, cfg.Consumer)

	// The exported defaults say the same.
	assert.Equal(t, DefaultName, cfg.Connection.Name)
	assert.Equal(t, DefaultReconnectWait, cfg.Connection.ReconnectWait)
	assert.Equal(t, DefaultConnectTimeout, cfg.Connection.ConnectTimeout)
	assert.Equal(t, DefaultAckWait, cfg.Consumer.AckWait)
	assert.Equal(t, DefaultMaxAckPending, cfg.Consumer.MaxAckPending)
	assert.Equal(t, DefaultMaxInFlight, cfg.Consumer.MaxInFlight)
	assert.Equal(t, DefaultDuplicateWindow, cfg.Stream.DuplicateWindow)
}

type validCase struct {
	name  string
	props map[string]string // added to a valid natsURL
	check func(t *testing.T, c *Config)
}

// validCases decode one valid value of each field into the typed Config.
// TestEveryFieldHasAValidCase keeps it complete.
var validCases = []validCase{
	// Connection.
	{"natsURL one", map[string]string{"natsURL": "nats://nats.example.com:4222"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "nats://nats.example.com:4222", c.Connection.URL)
	}},
	{"natsURL several schemes", map[string]string{"natsURL": "nats://a:4222, tls://b:4443,ws://c:8080,wss://d:443"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "nats://a:4222, tls://b:4443,ws://c:8080,wss://d:443", c.Connection.URL)
	}},
	{"natsURL with user info", map[string]string{"natsURL": "nats://u:p@a:4222"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "nats://u:p@a:4222", c.Connection.URL)
	}},
	{"name", map[string]string{"name": "my-app"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "my-app", c.Connection.Name)
	}},
	{"token", map[string]string{"token": "t0k"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "t0k", c.Connection.Token)
	}},
	{"user and password", map[string]string{"user": "alice", "password": "pw"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "alice", c.Connection.User)
		assert.Equal(t, "pw", c.Connection.Password)
	}},
	{"jwt and seedKey", map[string]string{"jwt": "eyJ.x.y", "seedKey": "SUAEXAMPLE"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "eyJ.x.y", c.Connection.JWT)
		assert.Equal(t, "SUAEXAMPLE", c.Connection.SeedKey)
	}},
	{"seedKey with surrounding space", map[string]string{"jwt": "eyJ.x.y", "seedKey": "  SUAEXAMPLE\n"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "  SUAEXAMPLE\n", c.Connection.SeedKey)
	}},
	{"nkeySeed", map[string]string{"nkeySeed": "SUANKEY"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "SUANKEY", c.Connection.NKeySeed)
	}},
	{"credsFile", map[string]string{"credsFile": "/etc/nats/user.creds"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "/etc/nats/user.creds", c.Connection.CredsFile)
	}},
	{"tls client cert and key", map[string]string{"tls_client_cert": "/c.pem", "tls_client_key": "/k.pem"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "/c.pem", c.Connection.TLSClientCert)
		assert.Equal(t, "/k.pem", c.Connection.TLSClientKey)
	}},
	{"tls client cert with a token", map[string]string{"tls_client_cert": "/c.pem", "tls_client_key": "/k.pem", "token": "t"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "t", c.Connection.Token)
		assert.Equal(t, "/c.pem", c.Connection.TLSClientCert)
	}},
	{"tls_ca_file", map[string]string{"tls_ca_file": "/ca.pem"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "/ca.pem", c.Connection.TLSCAFile)
	}},
	{"domain", map[string]string{"domain": "hub"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "hub", c.Connection.Domain)
	}},
	{"apiPrefix", map[string]string{"apiPrefix": "$JS.hub.API"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "$JS.hub.API", c.Connection.APIPrefix)
	}},
	{"reconnectWait", map[string]string{"reconnectWait": "500ms"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 500*time.Millisecond, c.Connection.ReconnectWait)
	}},
	{"reconnectWait in seconds", map[string]string{"reconnectWait": "3"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 3*time.Second, c.Connection.ReconnectWait)
	}},
	{"reconnectWait 0 is the default", map[string]string{"reconnectWait": "0"}, func(t *testing.T, c *Config) {
		assert.Equal(t, DefaultReconnectWait, c.Connection.ReconnectWait)
	}},
	{"connectTimeout", map[string]string{"connectTimeout": "10s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 10*time.Second, c.Connection.ConnectTimeout)
	}},
	{"connectTimeout 0 is the default", map[string]string{"connectTimeout": "0s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, DefaultConnectTimeout, c.Connection.ConnectTimeout)
	}},

	// Stream.
	{"streamName", map[string]string{"streamName": "ORDERS"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "ORDERS", c.Stream.Name)
	}},
	{"autoProvision false", map[string]string{"autoProvision": "false"}, func(t *testing.T, c *Config) {
		assert.False(t, c.Stream.AutoProvision)
	}},
	{"autoProvision 0", map[string]string{"autoProvision": "0"}, func(t *testing.T, c *Config) {
		assert.False(t, c.Stream.AutoProvision)
	}},
	{"autoProvision TRUE", map[string]string{"autoProvision": "TRUE"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Stream.AutoProvision)
	}},
	{"bulkPublishAtomic true", map[string]string{"bulkPublishAtomic": "true"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Publish.BulkAtomic)
	}},
	{"bulkPublishAtomic absent", map[string]string{}, func(t *testing.T, c *Config) {
		assert.False(t, c.Publish.BulkAtomic, "off by default")
	}},
	{"streamSubjects", map[string]string{"streamName": "ORDERS", "streamSubjects": "orders.>, payments.*.new ,ORDERS"}, func(t *testing.T, c *Config) {
		assert.Equal(t, []string{"orders.>", "payments.*.new", "ORDERS"}, c.Stream.Subjects)
	}},
	{"streamStorage memory", map[string]string{"streamStorage": "memory"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.MemoryStorage, c.Stream.Storage)
	}},
	{"streamStorage MEMORY", map[string]string{"streamStorage": "MEMORY"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.MemoryStorage, c.Stream.Storage)
	}},
	{"streamStorage file", map[string]string{"streamStorage": "file"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.FileStorage, c.Stream.Storage)
	}},
	{"streamReplicas 3", map[string]string{"streamReplicas": "3"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 3, c.Stream.Replicas)
	}},
	{"streamReplicas 5", map[string]string{"streamReplicas": "5"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5, c.Stream.Replicas)
	}},
	{"streamMaxAge", map[string]string{"streamMaxAge": "24h"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 24*time.Hour, c.Stream.MaxAge)
	}},
	{"streamMaxMsgs", map[string]string{"streamMaxMsgs": "1000"}, func(t *testing.T, c *Config) {
		assert.Equal(t, int64(1000), c.Stream.MaxMsgs)
	}},
	{"streamMaxMsgs -1", map[string]string{"streamMaxMsgs": "-1"}, func(t *testing.T, c *Config) {
		assert.Equal(t, int64(-1), c.Stream.MaxMsgs)
	}},
	{"streamMaxBytes", map[string]string{"streamMaxBytes": "1073741824"}, func(t *testing.T, c *Config) {
		assert.Equal(t, int64(1<<30), c.Stream.MaxBytes)
	}},
	{"streamRetention workqueue", map[string]string{"streamRetention": "WorkQueue", "streamReplicas": "3"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.WorkQueuePolicy, c.Stream.Retention)
		assert.Equal(t, []string{"streamReplicas", "streamRetention"}, c.Stream.Given)
	}},
	{"streamRetention interest", map[string]string{"streamRetention": "interest"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.InterestPolicy, c.Stream.Retention)
	}},
	{"streamRetention limits", map[string]string{"streamRetention": "limits"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.LimitsPolicy, c.Stream.Retention)
	}},
	{"streamRetention workqueue with deliverAll", map[string]string{"streamRetention": "workqueue", "deliverAll": "true"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.DeliverAllPolicy, c.Consumer.DeliverPolicy)
	}},
	{"streamDiscard new", map[string]string{"streamDiscard": "new"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.DiscardNew, c.Stream.Discard)
	}},
	{"streamDiscard old", map[string]string{"streamDiscard": "Old"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.DiscardOld, c.Stream.Discard)
	}},
	{"streamMaxMsgSize", map[string]string{"streamMaxMsgSize": "1048576"}, func(t *testing.T, c *Config) {
		assert.Equal(t, int32(1<<20), c.Stream.MaxMsgSize)
	}},
	{"streamMaxMsgsPerSubject", map[string]string{"streamMaxMsgsPerSubject": "10"}, func(t *testing.T, c *Config) {
		assert.Equal(t, int64(10), c.Stream.MaxMsgsPerSubject)
	}},
	{"streamCompression s2", map[string]string{"streamCompression": "S2"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.S2Compression, c.Stream.Compression)
	}},
	{"streamPlacement", map[string]string{"streamPlacementCluster": "east", "streamPlacementTags": "ssd, az:1"}, func(t *testing.T, c *Config) {
		assert.Equal(t, &jetstream.Placement{Cluster: "east", Tags: []string{"ssd", "az:1"}}, c.Stream.Placement)
	}},
	{"streamPlacementTags alone", map[string]string{"streamPlacementTags": "ssd"}, func(t *testing.T, c *Config) {
		assert.Equal(t, &jetstream.Placement{Tags: []string{"ssd"}}, c.Stream.Placement)
	}},
	{"streamDuplicateWindow", map[string]string{"streamDuplicateWindow": "5m"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5*time.Minute, c.Stream.DuplicateWindow)
	}},
	{"streamDuplicateWindow equal to streamMaxAge", map[string]string{"streamDuplicateWindow": "1h", "streamMaxAge": "1h"}, func(t *testing.T, c *Config) {
		assert.Equal(t, time.Hour, c.Stream.DuplicateWindow)
		assert.Equal(t, time.Hour, c.Stream.MaxAge)
	}},
	{"streamMaxAge shorter than the default duplicate window", map[string]string{"streamMaxAge": "1m"}, func(t *testing.T, c *Config) {
		// As the server does: an unset window is capped at the age limit.
		assert.Equal(t, time.Minute, c.Stream.MaxAge)
		assert.Equal(t, time.Minute, c.Stream.DuplicateWindow)
	}},

	// Consumer.
	{"consumerID", map[string]string{"consumerID": "app1"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "app1", c.Consumer.DurableBase)
	}},
	{"queueGroupName over consumerID", map[string]string{"consumerID": "app1", "queueGroupName": "group"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "group", c.Consumer.DurableBase)
	}},
	{"durableName over all", map[string]string{"consumerID": "app1", "queueGroupName": "group", "durableName": "dur"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "dur", c.Consumer.DurableBase)
	}},
	{"deliverPolicy", map[string]string{"deliverPolicy": "new"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.DeliverNewPolicy, c.Consumer.DeliverPolicy)
		assert.False(t, c.Consumer.StartAtSubscribe)
	}},
	{"deliverAll", map[string]string{"deliverAll": "true"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.DeliverAllPolicy, c.Consumer.DeliverPolicy)
	}},
	{"startSequence", map[string]string{"startSequence": "42"}, func(t *testing.T, c *Config) {
		assert.Equal(t, uint64(42), c.Consumer.StartSequence)
	}},
	{"startTime", map[string]string{"startTime": "1700000000"}, func(t *testing.T, c *Config) {
		assert.Equal(t, time.Unix(1700000000, 0).UTC(), c.Consumer.StartTime)
	}},
	{"startTime in seconds", map[string]string{"startTime": "1767225600"}, func(t *testing.T, c *Config) {
		assert.Equal(t, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), c.Consumer.StartTime)
	}},
	{"startTime largest", map[string]string{"startTime": "99999999999"}, func(t *testing.T, c *Config) {
		assert.Equal(t, time.Date(5138, 11, 16, 9, 46, 39, 0, time.UTC), c.Consumer.StartTime)
		_, err := json.Marshal(c.Consumer.StartTime) // as the consumer config is sent
		assert.NoError(t, err)
	}},
	{"ackPolicy all", map[string]string{"ackPolicy": "all"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.AckAllPolicy, c.Consumer.AckPolicy)
	}},
	{"ackPolicy None", map[string]string{"ackPolicy": "None"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.AckNonePolicy, c.Consumer.AckPolicy)
	}},
	{"ackPolicy explicit", map[string]string{"ackPolicy": "explicit"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.AckExplicitPolicy, c.Consumer.AckPolicy)
	}},
	{"ackWait", map[string]string{"ackWait": "10s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 10*time.Second, c.Consumer.AckWait)
	}},
	{"ackWait in seconds", map[string]string{"ackWait": "45"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 45*time.Second, c.Consumer.AckWait)
	}},
	{"maxDeliver", map[string]string{"maxDeliver": "5"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5, c.Consumer.MaxDeliver)
	}},
	{"maxDeliver 0 is unlimited", map[string]string{"maxDeliver": "0"}, func(t *testing.T, c *Config) {
		assert.Equal(t, -1, c.Consumer.MaxDeliver)
	}},
	{"maxDeliver -1", map[string]string{"maxDeliver": "-1"}, func(t *testing.T, c *Config) {
		assert.Equal(t, -1, c.Consumer.MaxDeliver)
	}},
	{"backOff", map[string]string{"backOff": "1s, 5s,30s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, []time.Duration{time.Second, 5 * time.Second, 30 * time.Second}, c.Consumer.BackOff)
	}},
	{"backOff with maxDeliver above its length", map[string]string{"backOff": "1s,5s", "maxDeliver": "3"}, func(t *testing.T, c *Config) {
		assert.Len(t, c.Consumer.BackOff, 2)
		assert.Equal(t, 3, c.Consumer.MaxDeliver)
	}},
	{"backOff as long as maxDeliver", map[string]string{"backOff": "1s,2s,3s", "maxDeliver": "3"}, func(t *testing.T, c *Config) {
		// The server accepts as many steps as deliveries.
		assert.Len(t, c.Consumer.BackOff, 3)
		assert.Equal(t, 3, c.Consumer.MaxDeliver)
	}},
	{"backOff with unlimited maxDeliver", map[string]string{"backOff": "1s,2s,3s", "maxDeliver": "0"}, func(t *testing.T, c *Config) {
		assert.Len(t, c.Consumer.BackOff, 3)
		assert.Equal(t, -1, c.Consumer.MaxDeliver)
	}},
	{"nakDelay", map[string]string{"nakDelay": "1s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, time.Second, c.Consumer.NakDelay)
	}},
	{"nakDelay 0", map[string]string{"nakDelay": "0s"}, func(t *testing.T, c *Config) {
		assert.Zero(t, c.Consumer.NakDelay)
	}},
	{"maxAckPending", map[string]string{"maxAckPending": "5000"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5000, c.Consumer.MaxAckPending)
	}},
	{"maxAckPending -1", map[string]string{"maxAckPending": "-1"}, func(t *testing.T, c *Config) {
		assert.Equal(t, -1, c.Consumer.MaxAckPending)
	}},
	{"maxInFlight", map[string]string{"maxInFlight": "10"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 10, c.Consumer.MaxInFlight)
	}},
	{"replicas", map[string]string{"replicas": "3"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 3, c.Consumer.Replicas)
	}},
	{"replicas 0", map[string]string{"replicas": "0"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 0, c.Consumer.Replicas)
	}},
	{"memoryStorage", map[string]string{"memoryStorage": "true"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Consumer.MemoryStorage)
	}},
	{"memoryStorage t", map[string]string{"memoryStorage": "t"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Consumer.MemoryStorage)
	}},
	{"rateLimit", map[string]string{"rateLimit": "1000000"}, func(t *testing.T, c *Config) {
		assert.Equal(t, uint64(1000000), c.Consumer.RateLimit)
	}},
	{"rateLimit 0", map[string]string{"rateLimit": "0"}, func(t *testing.T, c *Config) {
		assert.Zero(t, c.Consumer.RateLimit)
	}},
	{"heartbeat", map[string]string{"heartbeat": "5s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5*time.Second, c.Consumer.Heartbeat)
	}},
	{"heartbeat bounds", map[string]string{"heartbeat": "500ms"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 500*time.Millisecond, c.Consumer.Heartbeat)
	}},
	{"heartbeat 30s", map[string]string{"heartbeat": "30s"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 30*time.Second, c.Consumer.Heartbeat)
	}},
	{"heartbeat 0", map[string]string{"heartbeat": "0"}, func(t *testing.T, c *Config) {
		assert.Zero(t, c.Consumer.Heartbeat)
	}},
	{"flowControl", map[string]string{"flowControl": "true"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Consumer.FlowControl)
	}},
	{"flowControl F", map[string]string{"flowControl": "F"}, func(t *testing.T, c *Config) {
		assert.False(t, c.Consumer.FlowControl)
	}},
	{"concurrency parallel", map[string]string{"concurrency": "parallel"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Consumer.Parallel)
	}},
	{"concurrency Parallel with ackPolicy none", map[string]string{"concurrency": "Parallel", "ackPolicy": "none"}, func(t *testing.T, c *Config) {
		assert.True(t, c.Consumer.Parallel)
		assert.Equal(t, jetstream.AckNonePolicy, c.Consumer.AckPolicy)
	}},
	{"deadLetterSubject", map[string]string{"deadLetterSubject": " dead.{topic} "}, func(t *testing.T, c *Config) {
		assert.Equal(t, "dead.{topic}", c.Consumer.DeadLetterSubject)
		assert.Equal(t, "dead.orders.new", c.Consumer.DeadLetterFor("orders.new"))
	}},
	{"priorityPolicy pinned", map[string]string{"priorityPolicy": "Pinned", "consumerID": "app"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.PriorityPolicyPinned, c.Consumer.PriorityPolicy)
		assert.Equal(t, DefaultPinnedTTL, c.Consumer.PinnedTTL)
	}},
	{"priorityPolicy pinned with pinnedTTL", map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "5s", "consumerID": "app"}, func(t *testing.T, c *Config) {
		assert.Equal(t, 5*time.Second, c.Consumer.PinnedTTL)
	}},
	{"priorityPolicy overflow with minPending", map[string]string{"priorityPolicy": "overflow", "minPending": "100", "consumerID": "app"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.PriorityPolicyOverflow, c.Consumer.PriorityPolicy)
		assert.Equal(t, int64(100), c.Consumer.MinPending)
		assert.Zero(t, c.Consumer.PinnedTTL)
	}},
	{"priorityPolicy none", map[string]string{"priorityPolicy": "none"}, func(t *testing.T, c *Config) {
		assert.Equal(t, jetstream.PriorityPolicyNone, c.Consumer.PriorityPolicy)
	}},
	{"deadLetterSubject without a template", map[string]string{"deadLetterSubject": "DEAD"}, func(t *testing.T, c *Config) {
		assert.Equal(t, "DEAD", c.Consumer.DeadLetterFor("orders"))
	}},
	{"concurrency single", map[string]string{"concurrency": "single"}, func(t *testing.T, c *Config) {
		assert.False(t, c.Consumer.Parallel)
	}},
}

func TestParseValidValues(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, mustParse(t, with(tc.props)))
		})
	}
}

func TestEveryFieldHasAValidCase(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range validCases {
		for k := range tc.props {
			covered[k] = true
		}
	}
	for tag := range propertyTags() {
		assert.Truef(t, covered[tag], "no valid case sets %q", tag)
	}
}

// typeErrorCases give a value of the wrong type to every field that is not
// text. TestEveryTypedFieldHasATypeErrorCase keeps it complete.
var typeErrorCases = []struct {
	field, value, accepted string
}{
	{"reconnectWait", "abc", acceptedDuration},
	{"connectTimeout", "5 seconds", acceptedDuration},
	{"autoProvision", "ture", acceptedBool},
	{"autoProvision", "yes", acceptedBool},
	{"bulkPublishAtomic", "atomic", acceptedBool},
	{"streamReplicas", "abc", acceptedInt},
	{"streamReplicas", "1.5", acceptedInt},
	{"streamMaxAge", "1 day", acceptedDuration},
	{"streamMaxMsgs", "abc", acceptedInt},
	{"streamMaxMsgs", "99999999999999999999", acceptedInt},
	{"streamMaxBytes", "1GB", acceptedInt},
	{"streamDuplicateWindow", "abc", acceptedDuration},
	{"streamMaxMsgSize", "1MB", acceptedInt},
	{"pinnedTTL", "soon", acceptedDuration},
	{"minPending", "many", acceptedInt},
	{"streamMaxMsgsPerSubject", "ten", acceptedInt},
	{"deliverAll", "maybe", acceptedBool},
	{"startSequence", "abc", acceptedUint},
	{"startSequence", "-1", acceptedUint},
	{"startTime", "2024-01-01T00:00:00Z", acceptedInt},
	{"ackWait", "abc", acceptedDuration},
	{"maxDeliver", "abc", acceptedInt},
	{"backOff", "1s,abc,5s", acceptedDurations},
	{"nakDelay", "abc", acceptedDuration},
	{"maxAckPending", "abc", acceptedInt},
	{"maxInFlight", "abc", acceptedInt},
	{"replicas", "three", acceptedInt},
	{"memoryStorage", "nope", acceptedBool},
	{"rateLimit", "abc", acceptedUint},
	{"rateLimit", "-5", acceptedUint},
	{"heartbeat", "abc", acceptedDuration},
	{"flowControl", "on", acceptedBool},
}

const (
	acceptedDuration  = "a duration such as 500ms, 30s or 5m, or a whole number of seconds"
	acceptedDurations = "a comma-separated list of durations such as 1s,5s,30s"
	acceptedBool      = "true or false"
	acceptedUint      = "a whole number, 0 or more"
	acceptedInt       = "a whole number"
)

func TestParseTypeErrors(t *testing.T) {
	for _, tc := range typeErrorCases {
		t.Run(tc.field+"="+tc.value, func(t *testing.T) {
			cfg, err := Parse(with(map[string]string{tc.field: tc.value}))
			assert.Nil(t, cfg)
			fe := requireFieldErr(t, err, tc.field, "cannot be read", tc.accepted)
			assert.Equal(t, tc.accepted, fe.Accepted)
			assert.Equal(t, tc.value, fe.Value)
			assert.Contains(t, err.Error(), fmt.Sprintf("%q = %q", tc.field, tc.value))
			assert.Len(t, leaves(err), 1, "only the bad field is reported: %v", err)
		})
	}
}

func TestEveryTypedFieldHasATypeErrorCase(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range typeErrorCases {
		covered[tc.field] = true
	}
	for tag, typ := range propertyTags() {
		if typ.Kind() == reflect.String || typ == reflect.TypeFor[[]string]() {
			continue // any text decodes
		}
		assert.Truef(t, covered[tag], "no type error case for %q", tag)
	}
}

func TestParseFieldErrors(t *testing.T) {
	cases := []struct {
		name     string
		props    map[string]string // complete metadata (natsURL not added)
		field    string
		problem  string
		accepted string
	}{
		{"natsURL missing", map[string]string{}, "natsURL", "is required", "nats://localhost:4222"},
		{"natsURL nil map", nil, "natsURL", "is required", "nats://localhost:4222"},
		{"natsURL blank", map[string]string{"natsURL": "  "}, "natsURL", "is required", "comma-separated"},
		{"natsURL only commas", map[string]string{"natsURL": ","}, "natsURL", "is required", "comma-separated"},
		{"natsURL only commas and blanks", map[string]string{"natsURL": " , ,"}, "natsURL", "is required", "comma-separated"},
		{"natsURL http", map[string]string{"natsURL": "http://localhost:4222"}, "natsURL", "is not a NATS server URL", "nats://host:port, tls://host:port"},
		{"natsURL without scheme", map[string]string{"natsURL": "localhost:4222"}, "natsURL", "is not a NATS server URL", "wss://host:port"},
		{"natsURL without host", map[string]string{"natsURL": "nats://"}, "natsURL", "is not a NATS server URL", "nats://host:port"},
		{"natsURL second bad", map[string]string{"natsURL": "nats://a:4222,b"}, "natsURL", "is not a NATS server URL", "comma-separated for several servers"},
		{"natsURL unparsable", map[string]string{"natsURL": "nats://a b:4222"}, "natsURL", "is not a NATS server URL", "nats://host:port"},
		{"reconnectWait negative", with(map[string]string{"reconnectWait": "-1s"}), "reconnectWait", "must not be negative", "a duration such as 2s"},
		{"domain with a dot", with(map[string]string{"domain": "hub.eu"}), "domain", "is not a JetStream domain", "letters, digits, - and _"},
		{"domain with a wildcard", with(map[string]string{"domain": "hub>"}), "domain", "is not a JetStream domain", "letters, digits, - and _"},
		{"domain with a space", with(map[string]string{"domain": "my hub"}), "domain", "is not a JetStream domain", "the domain of the JetStream servers"},
		{"apiPrefix with a wildcard", with(map[string]string{"apiPrefix": "JS.*.API"}), "apiPrefix", "wildcard", "a subject prefix such as JS.acc.API"},
		{"apiPrefix with a space", with(map[string]string{"apiPrefix": "JS acc"}), "apiPrefix", "is not a subject prefix", "a subject prefix such as JS.acc.API"},
		{"connectTimeout negative", with(map[string]string{"connectTimeout": "-5"}), "connectTimeout", "must not be negative", "a duration such as 5s"},
		{"seedKey not a user seed", with(map[string]string{"jwt": "eyJ", "seedKey": "SAACCOUNTSEED"}), "seedKey", "is not an NKey user seed", "starts with SU"},
		{"nkeySeed not a user seed", with(map[string]string{"nkeySeed": "UABCPUBLICKEY"}), "nkeySeed", "is not an NKey user seed", "starts with SU"},
		{"streamName with a dot", with(map[string]string{"streamName": "orders.v1"}), "streamName", "is not a valid stream name", "letters, digits, - and _"},
		{"streamName with a space", with(map[string]string{"streamName": "my stream"}), "streamName", "is not a valid stream name", "without spaces"},
		{"streamName with a wildcard", with(map[string]string{"streamName": "ORDERS*"}), "streamName", "is not a valid stream name", "at most 255 characters"},
		{"streamName too long", with(map[string]string{"streamName": strings.Repeat("s", 256)}), "streamName", "is not a valid stream name", "at most 255 characters"},
		{"streamSubjects double dot", with(map[string]string{"streamName": "S", "streamSubjects": "a..b"}), "streamSubjects", "empty token", "comma-separated"},
		{"streamSubjects empty entry", with(map[string]string{"streamName": "S", "streamSubjects": "a.b,"}), "streamSubjects", "is empty", "orders.>"},
		{"streamSubjects wildcard inside token", with(map[string]string{"streamName": "S", "streamSubjects": "a.b*"}), "streamSubjects", "inside a token", "NATS subjects"},
		{"streamStorage", with(map[string]string{"streamStorage": "disk"}), "streamStorage", "is not a storage type", "file or memory"},
		{"streamReplicas 0", with(map[string]string{"streamReplicas": "0"}), "streamReplicas", "is out of range", "1 to 5"},
		{"streamReplicas 6", with(map[string]string{"streamReplicas": "6"}), "streamReplicas", "is out of range", "1 to 5"},
		{"streamReplicas -1", with(map[string]string{"streamReplicas": "-1"}), "streamReplicas", "is out of range", "1 to 5"},
		{"streamMaxAge negative", with(map[string]string{"streamMaxAge": "-1h"}), "streamMaxAge", "must not be negative", "0 for no limit"},
		{"streamMaxMsgs 0", with(map[string]string{"streamMaxMsgs": "0"}), "streamMaxMsgs", "is out of range", "-1 for no limit"},
		{"streamMaxMsgs -2", with(map[string]string{"streamMaxMsgs": "-2"}), "streamMaxMsgs", "is out of range", "a positive number"},
		{"streamMaxBytes 0", with(map[string]string{"streamMaxBytes": "0"}), "streamMaxBytes", "is out of range", "-1 for no limit"},
		{"streamMaxBytes -5", with(map[string]string{"streamMaxBytes": "-5"}), "streamMaxBytes", "is out of range", "a positive number"},
		{"streamDuplicateWindow negative", with(map[string]string{"streamDuplicateWindow": "-1s"}), "streamDuplicateWindow", "must not be negative", "a duration such as 2m"},
		{"streamRetention", with(map[string]string{"streamRetention": "forever"}), "streamRetention", "is not a retention policy", "limits, interest or workqueue"},
		{"streamDiscard", with(map[string]string{"streamDiscard": "oldest"}), "streamDiscard", "is not a discard policy", "old (drop the oldest messages when full) or new"},
		{"streamMaxMsgSize 0", with(map[string]string{"streamMaxMsgSize": "0"}), "streamMaxMsgSize", "is out of range", "from 1 to 2147483647, or -1"},
		{"streamMaxMsgSize over int32", with(map[string]string{"streamMaxMsgSize": "2147483648"}), "streamMaxMsgSize", "is out of range", "from 1 to 2147483647"},
		{"streamMaxMsgsPerSubject -2", with(map[string]string{"streamMaxMsgsPerSubject": "-2"}), "streamMaxMsgsPerSubject", "is out of range", "a positive number, or -1 for no limit"},
		{"streamCompression", with(map[string]string{"streamCompression": "gzip"}), "streamCompression", "is not a compression", "none or s2"},
		{"ackPolicy", with(map[string]string{"ackPolicy": "sometimes"}), "ackPolicy", "is not an ack policy", "explicit, all or none"},
		{"ackWait 0", with(map[string]string{"ackWait": "0s"}), "ackWait", "must be positive", "a duration such as 30s"},
		{"ackWait negative", with(map[string]string{"ackWait": "-1s"}), "ackWait", "must be positive", "a duration such as 30s"},
		{"maxDeliver -2", with(map[string]string{"maxDeliver": "-2"}), "maxDeliver", "is out of range", "1 or more, or -1 for no limit"},
		{"backOff zero step", with(map[string]string{"backOff": "1s,0s"}), "backOff", "not positive", "positive durations"},
		{"backOff negative step", with(map[string]string{"backOff": "-1s"}), "backOff", "not positive", "positive durations"},
		{"nakDelay negative", with(map[string]string{"nakDelay": "-1s"}), "nakDelay", "must not be negative", "0 to redeliver at once"},
		{"maxAckPending 0", with(map[string]string{"maxAckPending": "0"}), "maxAckPending", "is out of range", "1 or more, or -1 for no limit"},
		{"maxAckPending -2", with(map[string]string{"maxAckPending": "-2"}), "maxAckPending", "is out of range", "1 or more, or -1 for no limit"},
		{"maxInFlight 0", with(map[string]string{"maxInFlight": "0"}), "maxInFlight", "is out of range", "1 or more"},
		{"maxInFlight -1", with(map[string]string{"maxInFlight": "-1"}), "maxInFlight", "is out of range", "1 or more"},
		{"replicas -1", with(map[string]string{"replicas": "-1"}), "replicas", "is out of range", "0 (as the stream) to 5"},
		{"replicas 6", with(map[string]string{"replicas": "6"}), "replicas", "is out of range", "0 (as the stream) to 5"},
		{"heartbeat too short", with(map[string]string{"heartbeat": "100ms"}), "heartbeat", "is out of range", "500ms to 30s, or 0 for the default"},
		{"heartbeat too long", with(map[string]string{"heartbeat": "31s"}), "heartbeat", "is out of range", "500ms to 30s"},
		{"heartbeat negative", with(map[string]string{"heartbeat": "-1s"}), "heartbeat", "is out of range", "500ms to 30s"},
		{"concurrency", with(map[string]string{"concurrency": "multi"}), "concurrency", "is not a concurrency mode", "single or parallel"},
		{"priorityPolicy", with(map[string]string{"priorityPolicy": "sticky"}), "priorityPolicy", "is not a priority policy", "pinned (one replica at a time) or overflow"},
		{"pinnedTTL too short", with(map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "1s", "consumerID": "app"}), "pinnedTTL", "is too short", "2s or more"},
		{"minPending 0", with(map[string]string{"priorityPolicy": "overflow", "minPending": "0", "consumerID": "app"}), "minPending", "is out of range", "1 or more"},
		{"deadLetterSubject wildcard", with(map[string]string{"deadLetterSubject": "dead.*"}), "deadLetterSubject", "wildcard", "without wildcards, such as dead.{topic}"},
		{"deadLetterSubject space", with(map[string]string{"deadLetterSubject": "dead letters"}), "deadLetterSubject", "", "such as dead.{topic}"},
		{"deadLetterSubject empty token", with(map[string]string{"deadLetterSubject": "dead..{topic}"}), "deadLetterSubject", "", "such as dead.{topic}"},
		{"deadLetterSubject other template", with(map[string]string{"deadLetterSubject": "dead.{app}"}), "deadLetterSubject", "template other than {topic}", "{topic} stands for"},
		{"startSequence 0", with(map[string]string{"startSequence": "0"}), "startSequence", "is out of range", "1 or more"},
		{"startTime 0", with(map[string]string{"startTime": "0"}), "startTime", "is out of range", "a Unix time in seconds"},
		{"startTime negative", with(map[string]string{"startTime": "-5"}), "startTime", "is out of range", "a Unix time in seconds"},
		{"startTime in milliseconds", with(map[string]string{"startTime": "1700000000000"}), "startTime", "looks like milliseconds", "a Unix time in seconds, such as 1700000000"},
		{"startTime in milliseconds, not whole seconds", with(map[string]string{"startTime": "1700000000999"}), "startTime", "looks like milliseconds", "such as 1700000000"},
		{"startTime in microseconds", with(map[string]string{"startTime": "1700000000000000"}), "startTime", "looks like microseconds", "a Unix time in seconds, such as 1700000000"},
		{"startTime in nanoseconds", with(map[string]string{"startTime": "1700000000000000000"}), "startTime", "looks like nanoseconds", "a Unix time in seconds, such as 1700000000"},
		{"startTime largest int64", with(map[string]string{"startTime": "9223372036854775807"}), "startTime", "looks like nanoseconds", "such as 9223372036"},
		{"startTime after the year 9999", with(map[string]string{"startTime": "253402300800"}), "startTime", "after the year 9999", "a Unix time in seconds"},
		{"startTime in the year 5138", with(map[string]string{"startTime": "100000000000"}), "startTime", "the year 5138 or later", "a Unix time in seconds"},
		{"deliverPolicy unknown", with(map[string]string{"deliverPolicy": "bogus"}), "deliverPolicy", "is not a deliver policy", "all, last, new, sequence, time or last_per_subject"},
		{"deliverPolicy sequence alone", with(map[string]string{"deliverPolicy": "sequence"}), "deliverPolicy", "needs a start sequence", "set startSequence too"},
		{"deliverPolicy by_start_sequence alone", with(map[string]string{"deliverPolicy": "by_start_sequence"}), "deliverPolicy", "needs a start sequence", "set startSequence too"},
		{"deliverPolicy time alone", with(map[string]string{"deliverPolicy": "time"}), "deliverPolicy", "needs a start time", "set startTime too"},
		{"deliverPolicy byStartTime alone", with(map[string]string{"deliverPolicy": "byStartTime"}), "deliverPolicy", "needs a start time", "set startTime too"},
		// An empty value of a typed field is not its default: Dapr's decoder
		// reads it as 0 or false, so autoProvision "" turned provisioning off
		// and the others were reported as "0", which nobody typed.
		{"autoProvision empty", with(map[string]string{"autoProvision": ""}), "autoProvision", "is empty", "true or false"},
		{"streamReplicas empty", with(map[string]string{"streamReplicas": ""}), "streamReplicas", "is empty", "a whole number"},
		{"streamMaxMsgs empty", with(map[string]string{"streamMaxMsgs": ""}), "streamMaxMsgs", "is empty", "a whole number"},
		{"startSequence empty", with(map[string]string{"startSequence": ""}), "startSequence", "is empty", "a whole number, 0 or more"},
		{"maxAckPending empty", with(map[string]string{"maxAckPending": ""}), "maxAckPending", "is empty", "a whole number"},
		{"ackWait empty", with(map[string]string{"ackWait": ""}), "ackWait", "is empty", "a duration such as 500ms"},
		{"pinnedTTL empty", with(map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "", "consumerID": "app"}), "pinnedTTL", "is empty", "a duration such as 500ms"},
		// A blank durable base would win over consumerID: every app id would
		// share one durable and compete for messages instead of each getting all.
		{"durableName blank", with(map[string]string{"durableName": " ", "consumerID": "app"}), "durableName", "is blank", "remove the key"},
		{"queueGroupName blank", with(map[string]string{"queueGroupName": "\t", "consumerID": "app"}), "queueGroupName", "is blank", "remove the key"},
		// JetStream refuses these when the stream is created, at the first
		// publish, with an error that names no metadata key.
		{"streamSubjects twice", with(map[string]string{"streamName": "S", "streamSubjects": "orders.new,orders.new"}), "streamSubjects", "more than once", "NATS subjects"},
		{"streamSubjects overlapping", with(map[string]string{"streamName": "S", "streamSubjects": "orders.>,orders.new"}), "streamSubjects", "overlaps", "NATS subjects"},
		{"streamSubjects everything", with(map[string]string{"streamName": "S", "streamSubjects": ">"}), "streamSubjects", "JetStream", "NATS subjects"},
		{"streamSubjects JetStream API", with(map[string]string{"streamName": "S", "streamSubjects": "$JS.API.>"}), "streamSubjects", "JetStream", "NATS subjects"},
		{"streamSubjects system account", with(map[string]string{"streamName": "S", "streamSubjects": "$SYS.>"}), "streamSubjects", "system", "NATS subjects"},
		{"streamMaxAge under 100ms", with(map[string]string{"streamMaxAge": "50ms"}), "streamMaxAge", "is too short", "100ms or more, or 0 for no limit"},
		{"streamDuplicateWindow under 100ms", with(map[string]string{"streamDuplicateWindow": "10ms"}), "streamDuplicateWindow", "is too short", "100ms or more"},
		{"streamDuplicateWindow 0", with(map[string]string{"streamDuplicateWindow": "0"}), "streamDuplicateWindow", "is too short", "remove the key for the default"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(tc.props)
			assert.Nil(t, cfg)
			requireFieldErr(t, err, tc.field, tc.problem, tc.accepted)
		})
	}
}

func TestParseFieldErrorEchoesTheValue(t *testing.T) {
	_, err := Parse(with(map[string]string{"streamStorage": "disk"}))
	require.Error(t, err)
	assert.Equal(t, `metadata field "streamStorage" = "disk": is not a storage type; accepted: file or memory`, err.Error())

	_, err = Parse(with(map[string]string{"startTime": "1700000000000"}))
	require.Error(t, err)
	assert.Equal(t, `metadata field "startTime" = "1700000000000": looks like milliseconds, not seconds (as seconds it is after the year 9999); `+
		`accepted: a Unix time in seconds, such as 1700000000 (2023-11-14T22:13:20Z)`, err.Error())

	// An empty entry of a list is shown with the list it is in.
	for _, subjects := range []string{"orders.>,", "a,,b", "a, ,b"} {
		_, err = Parse(with(map[string]string{"streamName": "S", "streamSubjects": subjects}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), fmt.Sprintf(`metadata field "streamSubjects" = %q: `, subjects))
	}

	_, err = Parse(map[string]string{})
	require.Error(t, err)
	assert.Equal(t, `metadata field "natsURL": is required; accepted: a NATS URL such as nats://localhost:4222, or a comma-separated list of them`, err.Error())
}

func TestParseConflicts(t *testing.T) {
	cases := []struct {
		name   string
		props  map[string]string // added to a valid natsURL
		fields []string
	}{
		{"jwt without seedKey", map[string]string{"jwt": "eyJ"}, []string{"jwt", "seedKey"}},
		{"seedKey without jwt", map[string]string{"seedKey": "SUX"}, []string{"jwt", "seedKey"}},
		{"user without password", map[string]string{"user": "alice"}, []string{"user", "password"}},
		{"password without user", map[string]string{"password": "pw"}, []string{"user", "password"}},
		{"token and user", map[string]string{"token": "t", "user": "u", "password": "p"}, []string{"token", "user"}},
		{"token and nkeySeed", map[string]string{"token": "t", "nkeySeed": "SUX"}, []string{"token", "nkeySeed"}},
		{"token and jwt", map[string]string{"token": "t", "jwt": "eyJ", "seedKey": "SUX"}, []string{"token", "jwt"}},
		{"nkeySeed and credsFile", map[string]string{"nkeySeed": "SUX", "credsFile": "/u.creds"}, []string{"nkeySeed", "credsFile"}},
		{"jwt and credsFile", map[string]string{"jwt": "eyJ", "seedKey": "SUX", "credsFile": "/u.creds"}, []string{"jwt", "credsFile"}},
		{"user and credsFile", map[string]string{"user": "u", "password": "p", "credsFile": "/u.creds"}, []string{"user", "credsFile"}},
		{"all identities", map[string]string{"token": "t", "user": "u", "password": "p", "jwt": "eyJ", "seedKey": "SUX", "nkeySeed": "SUY", "credsFile": "/u.creds"},
			[]string{"token", "user", "jwt", "nkeySeed", "credsFile"}},
		{"tls cert without key", map[string]string{"tls_client_cert": "/c.pem"}, []string{"tls_client_cert", "tls_client_key"}},
		{"tls key without cert", map[string]string{"tls_client_key": "/k.pem"}, []string{"tls_client_cert", "tls_client_key"}},
		{"domain and apiPrefix", map[string]string{"domain": "hub", "apiPrefix": "$JS.hub.API"}, []string{"domain", "apiPrefix"}},
		{"streamSubjects without streamName", map[string]string{"streamSubjects": "orders.>"}, []string{"streamSubjects", "streamName"}},
		{"streamDuplicateWindow over streamMaxAge", map[string]string{"streamDuplicateWindow": "2h", "streamMaxAge": "1h"}, []string{"streamDuplicateWindow", "streamMaxAge"}},
		{"streamDuplicateWindow over a short streamMaxAge", map[string]string{"streamDuplicateWindow": "2m", "streamMaxAge": "1m"}, []string{"streamDuplicateWindow", "streamMaxAge"}},
		{"pinnedTTL without pinned", map[string]string{"pinnedTTL": "5s"}, []string{"pinnedTTL", "priorityPolicy"}},
		{"minPending with pinned", map[string]string{"priorityPolicy": "pinned", "minPending": "5", "consumerID": "app"}, []string{"minPending", "priorityPolicy"}},
		{"priorityPolicy without a durable", map[string]string{"priorityPolicy": "pinned"}, []string{"priorityPolicy", "consumerID"}},
		{"pinnedTTL within a pull request", map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "5s", "heartbeat": "3s", "consumerID": "app"}, []string{"pinnedTTL", "heartbeat"}},
		{"workqueue with ackPolicy none", map[string]string{"streamRetention": "workqueue", "ackPolicy": "none"}, []string{"streamRetention", "ackPolicy"}},
		{"workqueue with deliverPolicy new", map[string]string{"streamRetention": "workqueue", "deliverPolicy": "new"}, []string{"streamRetention", "deliverPolicy"}},
		{"workqueue with startSequence", map[string]string{"streamRetention": "workqueue", "startSequence": "5"}, []string{"streamRetention", "startSequence"}},
		{"maxDeliver below backOff steps", map[string]string{"maxDeliver": "1", "backOff": "1s,2s"}, []string{"maxDeliver", "backOff"}},
		{"maxInFlight over maxAckPending", map[string]string{"maxInFlight": "20", "maxAckPending": "10"}, []string{"maxInFlight", "maxAckPending"}},
		{"maxInFlight over default maxAckPending", map[string]string{"maxInFlight": "1001"}, []string{"maxInFlight", "maxAckPending"}},
		{"ackPolicy all with maxInFlight 2", map[string]string{"ackPolicy": "all", "maxInFlight": "2"}, []string{"ackPolicy", "maxInFlight"}},
		{"parallel with ackPolicy all", map[string]string{"ackPolicy": "all", "concurrency": "parallel"}, []string{"concurrency", "ackPolicy"}},
		{"startSequence and startTime", map[string]string{"startSequence": "5", "startTime": "1700000000"}, []string{"startSequence", "startTime"}},
		{"deliverAll and startSequence", map[string]string{"deliverAll": "true", "startSequence": "5"}, []string{"deliverAll", "startSequence"}},
		{"deliverAll and startTime", map[string]string{"deliverAll": "true", "startTime": "1700000000"}, []string{"deliverAll", "startTime"}},
		{"deliverAll and deliverPolicy new", map[string]string{"deliverAll": "true", "deliverPolicy": "new"}, []string{"deliverAll", "deliverPolicy"}},
		{"deliverAll and deliverPolicy last", map[string]string{"deliverAll": "1", "deliverPolicy": "last"}, []string{"deliverAll", "deliverPolicy"}},
		{"deliverPolicy new and startSequence", map[string]string{"deliverPolicy": "new", "startSequence": "5"}, []string{"deliverPolicy", "startSequence"}},
		{"deliverPolicy all and startSequence 5", map[string]string{"deliverPolicy": "all", "startSequence": "5"}, []string{"deliverPolicy", "startSequence"}},
		{"deliverPolicy time and startSequence", map[string]string{"deliverPolicy": "time", "startSequence": "5"}, []string{"deliverPolicy", "startSequence"}},
		{"deliverPolicy last_per_subject and startSequence", map[string]string{"deliverPolicy": "last_per_subject", "startSequence": "1"}, []string{"deliverPolicy", "startSequence"}},
		{"deliverPolicy last and startTime", map[string]string{"deliverPolicy": "last", "startTime": "1700000000"}, []string{"deliverPolicy", "startTime"}},
		{"deliverPolicy sequence and startTime", map[string]string{"deliverPolicy": "sequence", "startTime": "1700000000"}, []string{"deliverPolicy", "startTime"}},
		{"deliverPolicy all and startTime", map[string]string{"deliverPolicy": "all", "startTime": "1700000000"}, []string{"deliverPolicy", "startTime"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(with(tc.props))
			assert.Nil(t, cfg)
			requireConflict(t, err, tc.fields...)
		})
	}
}

func TestParseConflictMessage(t *testing.T) {
	_, err := Parse(with(map[string]string{"deliverPolicy": "new", "startSequence": "5"}))
	require.Error(t, err)
	assert.Equal(t, `metadata fields "deliverPolicy" and "startSequence": deliverPolicy "new" contradicts startSequence 5; `+
		`remove deliverPolicy (startSequence alone means sequence) or set it to sequence`, err.Error())
}

func TestParseSameKeyTwice(t *testing.T) {
	_, err := Parse(map[string]string{"natsURL": testURL, "NATSURL": "nats://other:4222"})
	requireConflict(t, err, "NATSURL", "natsURL")
	assert.NotContains(t, err.Error(), "other:4222")

	_, err = Parse(with(map[string]string{"maxInFlight": "5", "MaxInFlight": "6", "token": "s3cret-one", "TOKEN": "s3cret-two"}))
	requireConflict(t, err, "MaxInFlight", "maxInFlight")
	requireConflict(t, err, "TOKEN", "token")
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestDeliverPolicy(t *testing.T) {
	startTime := time.Unix(1700000000, 0).UTC()
	cases := []struct {
		name      string
		props     map[string]string
		policy    jetstream.DeliverPolicy
		atSub     bool
		seq       uint64
		startTime time.Time
	}{
		{"nothing starts at subscribe", nil, jetstream.DeliverByStartTimePolicy, true, 0, time.Time{}},
		{"deliverAll false starts at subscribe", map[string]string{"deliverAll": "false"}, jetstream.DeliverByStartTimePolicy, true, 0, time.Time{}},
		{"startSequence alone", map[string]string{"startSequence": "42"}, jetstream.DeliverByStartSequencePolicy, false, 42, time.Time{}},
		{"startSequence hex", map[string]string{"startSequence": "0x10"}, jetstream.DeliverByStartSequencePolicy, false, 16, time.Time{}},
		{"startTime alone", map[string]string{"startTime": "1700000000"}, jetstream.DeliverByStartTimePolicy, false, 0, startTime},
		{"deliverAll", map[string]string{"deliverAll": "true"}, jetstream.DeliverAllPolicy, false, 0, time.Time{}},
		{"deliverAll with deliverPolicy all", map[string]string{"deliverAll": "true", "deliverPolicy": "all"}, jetstream.DeliverAllPolicy, false, 0, time.Time{}},
		{"deliverAll false with startSequence", map[string]string{"deliverAll": "false", "startSequence": "3"}, jetstream.DeliverByStartSequencePolicy, false, 3, time.Time{}},
		{"deliverAll false with deliverPolicy new", map[string]string{"deliverAll": "false", "deliverPolicy": "new"}, jetstream.DeliverNewPolicy, false, 0, time.Time{}},
		{"deliverPolicy all", map[string]string{"deliverPolicy": "all"}, jetstream.DeliverAllPolicy, false, 0, time.Time{}},
		{"deliverPolicy ALL", map[string]string{"deliverPolicy": "ALL"}, jetstream.DeliverAllPolicy, false, 0, time.Time{}},
		{"deliverPolicy last", map[string]string{"deliverPolicy": "last"}, jetstream.DeliverLastPolicy, false, 0, time.Time{}},
		{"deliverPolicy new", map[string]string{"deliverPolicy": "new"}, jetstream.DeliverNewPolicy, false, 0, time.Time{}},
		{"deliverPolicy last_per_subject", map[string]string{"deliverPolicy": "last_per_subject"}, jetstream.DeliverLastPerSubjectPolicy, false, 0, time.Time{}},
		{"deliverPolicy lastPerSubject", map[string]string{"deliverPolicy": "lastPerSubject"}, jetstream.DeliverLastPerSubjectPolicy, false, 0, time.Time{}},
		{"deliverPolicy sequence with startSequence", map[string]string{"deliverPolicy": "sequence", "startSequence": "7"}, jetstream.DeliverByStartSequencePolicy, false, 7, time.Time{}},
		{"deliverPolicy by_start_sequence", map[string]string{"deliverPolicy": "by_start_sequence", "startSequence": "7"}, jetstream.DeliverByStartSequencePolicy, false, 7, time.Time{}},
		{"deliverPolicy byStartSequence", map[string]string{"deliverPolicy": "byStartSequence", "startSequence": "7"}, jetstream.DeliverByStartSequencePolicy, false, 7, time.Time{}},
		{"deliverPolicy time with startTime", map[string]string{"deliverPolicy": "time", "startTime": "1700000000"}, jetstream.DeliverByStartTimePolicy, false, 0, startTime},
		{"deliverPolicy by_start_time", map[string]string{"deliverPolicy": "by_start_time", "startTime": "1700000000"}, jetstream.DeliverByStartTimePolicy, false, 0, startTime},
		// Documented: "all" and "from sequence 1" are the same thing.
		{"deliverPolicy all with startSequence 1", map[string]string{"deliverPolicy": "all", "startSequence": "1"}, jetstream.DeliverAllPolicy, false, 0, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, with(tc.props)).Consumer
			assert.Equal(t, tc.policy, c.DeliverPolicy)
			assert.Equal(t, tc.atSub, c.StartAtSubscribe)
			assert.Equal(t, tc.seq, c.StartSequence)
			assert.Equal(t, tc.startTime, c.StartTime)
		})
	}
}

func TestDeliverAllWithStartSequenceOneIsDeliverAll(t *testing.T) {
	// The consumer must be exactly the one deliverPolicy all gives: a start
	// sequence next to DeliverAllPolicy is rejected by the server.
	a := mustParse(t, with(map[string]string{"deliverPolicy": "all", "startSequence": "1"})).Consumer
	b := mustParse(t, with(map[string]string{"deliverPolicy": "all"})).Consumer
	assert.Equal(t, b, a)
}

func TestMaxInFlight(t *testing.T) {
	cases := []struct {
		name  string
		props map[string]string
		want  int
	}{
		{"default", nil, 100},
		{"min with a smaller maxAckPending", map[string]string{"maxAckPending": "50"}, 50},
		{"maxAckPending equal to the default", map[string]string{"maxAckPending": "100"}, 100},
		{"maxAckPending larger", map[string]string{"maxAckPending": "5000"}, 100},
		{"maxAckPending 1", map[string]string{"maxAckPending": "1"}, 1},
		{"maxAckPending unlimited", map[string]string{"maxAckPending": "-1"}, 100},
		{"ackPolicy all", map[string]string{"ackPolicy": "all"}, 1},
		{"ackPolicy all with maxAckPending", map[string]string{"ackPolicy": "all", "maxAckPending": "10"}, 1},
		{"ackPolicy all with maxInFlight 1", map[string]string{"ackPolicy": "all", "maxInFlight": "1"}, 1},
		{"ackPolicy none", map[string]string{"ackPolicy": "none"}, 100},
		{"explicit equal to maxAckPending", map[string]string{"maxInFlight": "1000"}, 1000},
		{"explicit with unlimited maxAckPending", map[string]string{"maxInFlight": "5000", "maxAckPending": "-1"}, 5000},
		{"explicit below maxAckPending", map[string]string{"maxInFlight": "5", "maxAckPending": "10"}, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, mustParse(t, with(tc.props)).Consumer.MaxInFlight)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	t.Run("validation", func(t *testing.T) {
		_, err := Parse(map[string]string{
			"streamReplicas": "9",
			"ackPolicy":      "bogus",
			"concurrency":    "multi",
			"domain":         "hub",
			"apiPrefix":      "$JS.API",
			"startSequence":  "0",
		})
		require.Error(t, err)
		requireFieldErr(t, err, "natsURL", "is required", "")
		requireFieldErr(t, err, "streamReplicas", "out of range", "1 to 5")
		requireFieldErr(t, err, "ackPolicy", "not an ack policy", "explicit")
		requireFieldErr(t, err, "concurrency", "not a concurrency mode", "single")
		requireFieldErr(t, err, "startSequence", "out of range", "1 or more")
		requireConflict(t, err, "domain", "apiPrefix")
		assert.Len(t, leaves(err), 6, "%v", err)
		assert.Len(t, strings.Split(err.Error(), "\n"), 6, "one line per problem")
	})
	t.Run("decoding", func(t *testing.T) {
		_, err := Parse(with(map[string]string{"ackWait": "abc", "maxDeliver": "x", "deliverAll": "maybe", "streamReplicas": "9"}))
		require.Error(t, err)
		requireFieldErr(t, err, "ackWait", "cannot be read", acceptedDuration)
		requireFieldErr(t, err, "maxDeliver", "cannot be read", acceptedInt)
		requireFieldErr(t, err, "deliverAll", "cannot be read", acceptedBool)
		assert.Len(t, leaves(err), 3, "%v", err)
		// Sorted by key, so the message is stable.
		_, err2 := Parse(with(map[string]string{"ackWait": "abc", "maxDeliver": "x", "deliverAll": "maybe", "streamReplicas": "9"}))
		assert.Equal(t, err.Error(), err2.Error())
	})
	t.Run("across sections", func(t *testing.T) {
		_, err := Parse(with(map[string]string{"user": "u", "streamStorage": "disk", "ackWait": "0"}))
		requireConflict(t, err, "user", "password")
		requireFieldErr(t, err, "streamStorage", "not a storage type", "file or memory")
		requireFieldErr(t, err, "ackWait", "must be positive", "30s")
	})
	t.Run("deliver and consumer", func(t *testing.T) {
		_, err := Parse(with(map[string]string{"startSequence": "0", "startTime": "-1", "maxInFlight": "0"}))
		requireFieldErr(t, err, "startSequence", "out of range", "")
		requireFieldErr(t, err, "startTime", "out of range", "")
		requireFieldErr(t, err, "maxInFlight", "out of range", "")
	})
}

// Every value chosen from a list is read the same with spaces around it, as
// a templated or quoted YAML value may have them.
func TestParseChoicesIgnoreSurroundingSpaces(t *testing.T) {
	choices := map[string]string{
		"ackPolicy": "none", "concurrency": "parallel", "deliverPolicy": "new", "streamStorage": "memory",
		"streamRetention": "interest", "streamDiscard": "new", "streamCompression": "s2", "priorityPolicy": "overflow",
	}
	for key, value := range choices {
		t.Run(key, func(t *testing.T) {
			props := map[string]string{key: value}
			if key == "priorityPolicy" {
				props["minPending"], props["consumerID"] = "10", "app"
			}
			want := mustParse(t, with(props))
			props[key] = " " + value + "\n"
			got := mustParse(t, with(props))
			assert.Equal(t, want.Stream, got.Stream)
			assert.Equal(t, want.Consumer, got.Consumer)
		})
	}
}

func TestParseCaseInsensitiveKeys(t *testing.T) {
	cfg := mustParse(t, map[string]string{
		"NATSURL":         "nats://upper:4222",
		"StreamReplicas":  "3",
		"ACKPOLICY":       "none",
		"maxinflight":     "5",
		"DeliverPolicy":   "new",
		"TOKEN":           "tok",
		"Tls_Client_Cert": "/c.pem",
		"TLS_CLIENT_KEY":  "/k.pem",
	})
	assert.Equal(t, "nats://upper:4222", cfg.Connection.URL)
	assert.Equal(t, 3, cfg.Stream.Replicas)
	assert.Equal(t, jetstream.AckNonePolicy, cfg.Consumer.AckPolicy)
	assert.Equal(t, 5, cfg.Consumer.MaxInFlight)
	assert.Equal(t, jetstream.DeliverNewPolicy, cfg.Consumer.DeliverPolicy)
	assert.Equal(t, "tok", cfg.Connection.Token)
	assert.Equal(t, "/c.pem", cfg.Connection.TLSClientCert)
	assert.Equal(t, "/k.pem", cfg.Connection.TLSClientKey)

	// The component's consumer keys, in any case, are kept for subscriptions.
	c, err := cfg.ForSubscription(map[string]string{"MAXACKPENDING": "50"})
	require.NoError(t, err)
	assert.Equal(t, 5, c.MaxInFlight)
	assert.Equal(t, 50, c.MaxAckPending)
	assert.Equal(t, jetstream.DeliverNewPolicy, c.DeliverPolicy)
	assert.Equal(t, jetstream.AckNonePolicy, c.AckPolicy)

	// Errors use the canonical name.
	_, err = Parse(with(map[string]string{"STREAMREPLICAS": "abc"}))
	requireFieldErr(t, err, "streamReplicas", "cannot be read", acceptedInt)
	_, err = Parse(with(map[string]string{"STREAMREPLICAS": "7"}))
	requireFieldErr(t, err, "streamReplicas", "out of range", "1 to 5")
}

func TestSecretsNeverInErrors(t *testing.T) {
	const (
		token    = "tok-s3cret-1"
		password = "pw-s3cret-2"
		jwt      = "jwt-s3cret-3"
		seedKey  = "seed-s3cret-4"
		nkeySeed = "nkey-s3cret-5"
		urlPass  = "url-s3cret-6"
	)
	secrets := []string{token, password, jwt, seedKey, nkeySeed, urlPass, "s3cret"}
	cases := []struct {
		name  string
		props map[string]string
	}{
		{"every identity at once", map[string]string{
			"natsURL": "nats://u:" + urlPass + "@host:4222", "token": token, "user": "u", "password": password,
			"jwt": jwt, "seedKey": seedKey, "nkeySeed": nkeySeed, "credsFile": "/u.creds",
		}},
		{"password without user", with(map[string]string{"password": password})},
		{"token and password", with(map[string]string{"token": token, "password": password})},
		{"jwt without seedKey", with(map[string]string{"jwt": jwt})},
		{"seedKey without jwt, not a seed", with(map[string]string{"seedKey": seedKey})},
		{"bad seedKey", with(map[string]string{"jwt": jwt, "seedKey": seedKey})},
		{"bad nkeySeed", with(map[string]string{"nkeySeed": nkeySeed})},
		{"token and credsFile", with(map[string]string{"token": token, "credsFile": "/u.creds"})},
		{"secrets next to a decode error", with(map[string]string{"token": token, "password": password, "jwt": jwt, "seedKey": seedKey, "nkeySeed": nkeySeed, "streamReplicas": "abc"})},
		{"secret spelled twice", with(map[string]string{"token": token, "Token": token + "x", "password": password, "PASSWORD": password})},
		{"url password with another error", map[string]string{"natsURL": "nats://u:" + urlPass + "@host:4222", "streamReplicas": "9"}},
		{"url password, wrong scheme", map[string]string{"natsURL": "http://u:" + urlPass + "@host:4222"}},
		{"url password, no host", map[string]string{"natsURL": "nats://u:" + urlPass + "@"}},
		{"url password, no scheme", map[string]string{"natsURL": "u:" + urlPass + "@host:4222"}},
		{"url password containing @", map[string]string{"natsURL": "ftp://u:p@" + urlPass + "@host:4222"}},
		{"url password in a list", map[string]string{"natsURL": "nats://a:4222,tls://u:" + urlPass + "@b:notaport"}},
		{"url token with wrong scheme", map[string]string{"natsURL": "ftp://" + urlPass + "@host"}},
		{"url password with bad port", map[string]string{"natsURL": "nats://u:" + urlPass + "@host:port"}},
		{"url password in a list with a bad entry", map[string]string{"natsURL": "nats://u:" + urlPass + "@host:4222,bogus"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.props)
			require.Error(t, err)
			require.ErrorIs(t, err, ErrInvalid)
			texts := []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err)}
			for _, l := range leaves(err) {
				texts = append(texts, l.Error())
			}
			for _, text := range texts {
				for _, s := range secrets {
					assert.NotContains(t, text, s)
				}
			}
		})
	}

	t.Run("hidden value is marked", func(t *testing.T) {
		_, err := Parse(with(map[string]string{"nkeySeed": nkeySeed}))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `metadata field "nkeySeed" (value hidden): is not an NKey user seed`)
	})
	t.Run("url is shown redacted", func(t *testing.T) {
		_, err := Parse(map[string]string{"natsURL": "http://u:" + urlPass + "@host:4222"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"http://***@host:4222"`)
	})
	t.Run("FieldError hides secret fields in any case", func(t *testing.T) {
		for _, f := range []string{"token", "Token", "password", "PASSWORD", "jwt", "seedKey", "seedkey", "nkeySeed"} {
			msg := (&FieldError{Field: f, Value: "hunter2", Problem: "is bad", Accepted: "x"}).Error()
			assert.NotContains(t, msg, "hunter2", f)
			assert.Contains(t, msg, "(value hidden)", f)
		}
		msg := (&FieldError{Field: "user", Value: "alice", Problem: "is bad"}).Error()
		assert.Equal(t, `metadata field "user" = "alice": is bad`, msg)
	})
}

func TestRedactURL(t *testing.T) {
	cases := map[string]string{
		"nats://localhost:4222":            "nats://localhost:4222",
		"nats://u:pw@host:4222":            "nats://***@host:4222",
		"nats://token@host:4222":           "nats://***@host:4222",
		"u:pw@host:4222":                   "***@host:4222",
		"tls://u:p@ss@host:4222":           "tls://***@host:4222",
		"":                                 "",
		"host@":                            "***@",
		"nats://host:4222/a@b":             "nats://***@b",
		"wss://u:pw@host:443/path?x=1":     "wss://***@host:443/path?x=1",
		"nats://u:pw@a:4222,nats://b:4222": "nats://***@a:4222,nats://b:4222",
		"nats://[::1]:4222":                "nats://[::1]:4222",

		// A comma in the user information does not end the URL.
		"nats://alice:s3cr,et@host:4222":                "nats://***@host:4222",
		"nats://alice:s3cr,et@a:4222, tls://b:4222":     "nats://***@a:4222, tls://b:4222",
		"nats://a:4222,nats://alice:s,3,cr,et@b:4222/x": "nats://a:4222,nats://***@b:4222/x",
		// Pieces of user information that a comma cut from their "@".
		"nats://alice:s3cr":             "nats://***",
		"nats://alice:s3cr,et":          "nats://***,***",
		"nats://alice:s3cr,et,x/y@host": "nats://***,***,***",
		"nats://u:x,#@0,0@h:4222":       "nats://***,***,***",
		"nats://alice:s3cr,et/x":        "nats://***,***",
		"alice:s3cr,et":                 "***,***",
		"nats://[::1]:s3cr,et":          "nats://***,***",
		"nats://alice:1234,5678#@h":     "nats://***,***",
		"nats://a:4222,nats://u:1,2/@h": "nats://a:4222,nats://***,***",
		// A URL without a scheme after another may be the rest of its
		// password: neither is shown.
		"nats://a:4222,b:4222": "nats://***,***",
		"nats://a:4222,,":      "nats://a:4222,,",
		"nats://u:p,://q@h":    "nats://***,***",
		"nats://u:p, 1x://q@h": "nats://***,***",
		"nats://u,A://p@h":     "nats://***,***",
		"nats://a,NATS://b":    "nats://a,NATS://b",
	}
	for in, want := range cases {
		assert.Equal(t, want, RedactURL(in), in)
	}
}

// natsGoServers splits a URL list as nats.go's Connect does (see
// processUrlString in nats.go): at every comma, whatever surrounds it.
func natsGoServers(t *testing.T, list string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		u, err := url.Parse(s)
		require.NoError(t, err, "nats.go could not parse a server URL of the list")
		out = append(out, u)
	}
	return out
}

func TestNatsURLCommaInUserInfo(t *testing.T) {
	type server struct{ user, password, host string }
	cases := []struct {
		natsURL string
		want    []server
	}{
		{"nats://alice:s3cr,et@host:4222", []server{{"alice", "s3cr,et", "host:4222"}}},
		{"nats://alice:s3cr%2Cet@host:4222", []server{{"alice", "s3cr,et", "host:4222"}}},
		{"nats://alice:,s3cr,,et,@host:4222", []server{{"alice", ",s3cr,,et,", "host:4222"}}},
		{"nats://al,ice:s3cr,et@host:4222", []server{{"al,ice", "s3cr,et", "host:4222"}}},
		{"nats://alice:s3cr,et@a:4222, tls://bob:x,y@b:4443,nats://c:4222,", []server{
			{"alice", "s3cr,et", "a:4222"}, {"bob", "x,y", "b:4443"}, {"", "", "c:4222"},
		}},
		{"nats://a:4222,nats://alice:s3cr,et@b:4222", []server{{"", "", "a:4222"}, {"alice", "s3cr,et", "b:4222"}}},
		{"nats://alice:s3cr,et@b:4222,nats://alice:s3cr,et@c:4222", []server{
			{"alice", "s3cr,et", "b:4222"}, {"alice", "s3cr,et", "c:4222"},
		}},
		{"wss://alice:s3cr,et@host:443/nats", []server{{"alice", "s3cr,et", "host:443"}}},
	}
	for _, tc := range cases {
		t.Run(tc.natsURL, func(t *testing.T) {
			cfg, err := Parse(map[string]string{"natsURL": tc.natsURL})
			require.NoError(t, err)
			servers := natsGoServers(t, cfg.Connection.URL)
			require.Len(t, servers, len(tc.want), cfg.Connection.URL)
			for i, w := range tc.want {
				assert.Equal(t, w.host, servers[i].Host)
				if w.user == "" {
					assert.Nil(t, servers[i].User)
					continue
				}
				require.NotNil(t, servers[i].User)
				assert.Equal(t, w.user, servers[i].User.Username())
				pw, ok := servers[i].User.Password()
				assert.True(t, ok)
				assert.Equal(t, w.password, pw)
			}
		})
	}

	t.Run("a token with a comma", func(t *testing.T) {
		cfg := mustParse(t, map[string]string{"natsURL": "nats://to,ken@host:4222"})
		servers := natsGoServers(t, cfg.Connection.URL)
		require.Len(t, servers, 1)
		assert.Equal(t, "to,ken", servers[0].User.Username())
		_, hasPassword := servers[0].User.Password()
		assert.False(t, hasPassword, "nats.go sends a user without a password as a token")
	})
	t.Run("a list without commas in user information is kept as given", func(t *testing.T) {
		const list = "nats://u:p@a:4222, tls://b:4443,,nats://c:4222"
		assert.Equal(t, list, mustParse(t, map[string]string{"natsURL": list}).Connection.URL)
	})
}

// No part of the user information of natsURL is ever shown, even when a
// comma cuts it off from its "@".
func TestNatsURLUserInfoNeverShown(t *testing.T) {
	for _, natsURL := range []string{
		"nats://alice:s3cr,et/x@host:4222",
		"nats://alice:s3cr,et",
		"nats://alice:s3cr,et,x/y@host:4222",
		"nats://alice:s3cr,et?x@host:4222",
		"http://alice:s3cr,et@host:4222",
		"nats://alice:s3cr,et@host:port",
		"nats://alice:s3cr,et@",
		"alice:s3cr,et@host:4222",
		"nats://alice:s3cr et@host:4222",
		"nats://alice:s3cr,e t@host:4222",
		"nats://b:4222,nats://alice:s3cr,et/x@host:4222",
	} {
		t.Run(natsURL, func(t *testing.T) {
			_, err := Parse(map[string]string{"natsURL": natsURL})
			fe := requireFieldErr(t, err, "natsURL", "", "percent-encode")
			texts := []string{err.Error(), fe.Value, RedactURL(natsURL)}
			for _, l := range leaves(err) {
				texts = append(texts, l.Error())
			}
			for _, text := range texts {
				for _, secret := range []string{"alice", "s3cr", "et@", "et/", "et?", "e t"} {
					assert.NotContains(t, text, secret)
				}
			}
		})
	}
}

func TestForSubscription(t *testing.T) {
	t.Run("no consumer keys gives the component's consumer", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverPolicy": "all", "maxInFlight": "7", "durableName": "d"}))
		for _, sub := range []map[string]string{nil, {}, {"rawPayload": "true", "streamReplicas": "abc"}} {
			c, err := cfg.ForSubscription(sub)
			require.NoError(t, err)
			assert.Equal(t, cfg.Consumer, c)
		}
	})
	t.Run("maxInFlight override", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"maxInFlight": "7", "ackWait": "10s"}))
		c, err := cfg.ForSubscription(map[string]string{"maxInFlight": "20"})
		require.NoError(t, err)
		want := cfg.Consumer
		want.MaxInFlight = 20
		assert.Equal(t, want, c)
		assert.Equal(t, 7, cfg.Consumer.MaxInFlight, "the component's settings are not changed")
	})
	t.Run("keys in any case", func(t *testing.T) {
		cfg := mustParse(t, with(nil))
		c, err := cfg.ForSubscription(map[string]string{"MAXINFLIGHT": "3", "AckPolicy": "none"})
		require.NoError(t, err)
		assert.Equal(t, 3, c.MaxInFlight)
		assert.Equal(t, jetstream.AckNonePolicy, c.AckPolicy)
	})
	t.Run("every consumer field can be overridden", func(t *testing.T) {
		cfg := mustParse(t, with(nil))
		c, err := cfg.ForSubscription(map[string]string{
			"durableName": "d", "deliverPolicy": "last", "ackPolicy": "none", "ackWait": "5s", "maxDeliver": "4",
			"backOff": "1s,2s", "nakDelay": "3s", "maxAckPending": "40", "maxInFlight": "4", "replicas": "1",
			"memoryStorage": "true", "rateLimit": "800", "heartbeat": "2s", "flowControl": "true", "concurrency": "parallel",
			"deadLetterSubject": "dlq.{topic}", "priorityPolicy": "overflow", "minPending": "7",
		})
		require.NoError(t, err)
		assert.Equal(t, Consumer{
			DurableBase: "d", DeliverPolicy: jetstream.DeliverLastPolicy, AckPolicy: jetstream.AckNonePolicy,
			AckWait: 5 * time.Second, MaxDeliver: 4, BackOff: []time.Duration{time.Second, 2 * time.Second},
			NakDelay: 3 * time.Second, MaxAckPending: 40, MaxAckPendingGiven: true, MaxInFlight: 4, Replicas: 1, MemoryStorage: true,
			RateLimit: 800, Heartbeat: 2 * time.Second, FlowControl: true, Parallel: true,
			DeadLetterSubject: "dlq.{topic}", PriorityPolicy: jetstream.PriorityPolicyOverflow, MinPending: 7,
		}, c)
	})
	t.Run("durable name from the subscription", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"consumerID": "app"}))
		c, err := cfg.ForSubscription(map[string]string{"queueGroupName": "q"})
		require.NoError(t, err)
		assert.Equal(t, "q", c.DurableBase)
		cfg = mustParse(t, with(map[string]string{"durableName": "d"}))
		c, err = cfg.ForSubscription(map[string]string{"durableName": "sub"})
		require.NoError(t, err)
		assert.Equal(t, "sub", c.DurableBase)
	})
	t.Run("startSequence drops the component's deliverPolicy", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverPolicy": "new"}))
		c, err := cfg.ForSubscription(map[string]string{"startSequence": "5"})
		require.NoError(t, err)
		assert.Equal(t, jetstream.DeliverByStartSequencePolicy, c.DeliverPolicy)
		assert.Equal(t, uint64(5), c.StartSequence)
	})
	t.Run("deliverPolicy drops the component's startSequence", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"startSequence": "5"}))
		c, err := cfg.ForSubscription(map[string]string{"deliverPolicy": "new"})
		require.NoError(t, err)
		assert.Equal(t, jetstream.DeliverNewPolicy, c.DeliverPolicy)
		assert.Zero(t, c.StartSequence)
	})
	t.Run("startTime drops the component's deliverAll", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverAll": "true"}))
		c, err := cfg.ForSubscription(map[string]string{"startTime": "1700000000"})
		require.NoError(t, err)
		assert.Equal(t, jetstream.DeliverByStartTimePolicy, c.DeliverPolicy)
		assert.Equal(t, time.Unix(1700000000, 0).UTC(), c.StartTime)
		assert.False(t, c.StartAtSubscribe)
	})
	// A subscription can opt its topic out of the Component's priority
	// policy, or choose the other one: the Component's pinnedTTL and
	// minPending then no longer apply to it. Otherwise they refuse the
	// subscription, whose author cannot remove them.
	t.Run("priorityPolicy drops the component's pinnedTTL and minPending", func(t *testing.T) {
		for _, tc := range []struct {
			component map[string]string
			sub       string
			want      jetstream.PriorityPolicy
			wantTTL   time.Duration
		}{
			{map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "10s"}, "none", jetstream.PriorityPolicyNone, 0},
			{map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "10s"}, "overflow", jetstream.PriorityPolicyOverflow, 0},
			{map[string]string{"priorityPolicy": "overflow", "minPending": "5"}, "pinned", jetstream.PriorityPolicyPinned, DefaultPinnedTTL},
			{map[string]string{"priorityPolicy": "pinned", "pinnedTTL": "10s"}, "pinned", jetstream.PriorityPolicyPinned, 10 * time.Second},
		} {
			tc.component["consumerID"] = "app"
			cfg := mustParse(t, with(tc.component))
			c, err := cfg.ForSubscription(map[string]string{"priorityPolicy": tc.sub})
			require.NoError(t, err, "component %v, subscription priorityPolicy %s", tc.component, tc.sub)
			assert.Equal(t, tc.want, c.PriorityPolicy)
			assert.Equal(t, tc.wantTTL, c.PinnedTTL)
			assert.Zero(t, c.MinPending)
		}
	})
	t.Run("startTime in milliseconds", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"startTime": "1700000000"}))
		for _, v := range []string{"1700000000000", "1700000000000000", "253402300800"} {
			_, err := cfg.ForSubscription(map[string]string{"startTime": v})
			fe := requireFieldErr(t, err, "startTime", "looks like", "a Unix time in seconds, such as ")
			assert.Equal(t, v, fe.Value)
			assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
		}
	})
	t.Run("deliverAll false drops the component's deliver choice", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverPolicy": "last"}))
		c, err := cfg.ForSubscription(map[string]string{"deliverAll": "false"})
		require.NoError(t, err)
		assert.True(t, c.StartAtSubscribe)
	})
	t.Run("other keys keep the component's deliver choice", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverPolicy": "all", "startSequence": "1"}))
		c, err := cfg.ForSubscription(map[string]string{"maxInFlight": "3"})
		require.NoError(t, err)
		assert.Equal(t, jetstream.DeliverAllPolicy, c.DeliverPolicy)
		assert.Equal(t, 3, c.MaxInFlight)
	})
	t.Run("deliverPolicy sequence alone replaces the component's startSequence", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"startSequence": "5"}))
		_, err := cfg.ForSubscription(map[string]string{"deliverPolicy": "sequence"})
		requireFieldErr(t, err, "deliverPolicy", "needs a start sequence", "startSequence")
		assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
	})
	t.Run("invalid value", func(t *testing.T) {
		cfg := mustParse(t, with(nil))
		_, err := cfg.ForSubscription(map[string]string{"maxInFlight": "abc"})
		requireFieldErr(t, err, "maxInFlight", "cannot be read", acceptedInt)
		assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
	})
	t.Run("out of range value", func(t *testing.T) {
		cfg := mustParse(t, with(nil))
		_, err := cfg.ForSubscription(map[string]string{"ackPolicy": "sometimes", "heartbeat": "1h"})
		requireFieldErr(t, err, "ackPolicy", "is not an ack policy", "explicit, all or none")
		requireFieldErr(t, err, "heartbeat", "out of range", "500ms to 30s")
		assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
	})
	t.Run("conflict with the component", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"maxAckPending": "10"}))
		_, err := cfg.ForSubscription(map[string]string{"maxInFlight": "20"})
		requireConflict(t, err, "maxInFlight", "maxAckPending")
		assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
		cfg = mustParse(t, with(map[string]string{"concurrency": "parallel"}))
		_, err = cfg.ForSubscription(map[string]string{"ackPolicy": "all"})
		requireConflict(t, err, "concurrency", "ackPolicy")
	})
	t.Run("the same key spelled twice", func(t *testing.T) {
		cfg := mustParse(t, with(nil))
		for range 20 {
			_, err := cfg.ForSubscription(map[string]string{"maxInFlight": "5", "MAXINFLIGHT": "6"})
			requireConflict(t, err, "MAXINFLIGHT", "maxInFlight")
			assert.True(t, strings.HasPrefix(err.Error(), "subscription metadata: "), err.Error())
		}
	})
	t.Run("a zero Config", func(t *testing.T) {
		var cfg Config
		c, err := cfg.ForSubscription(map[string]string{"maxInFlight": "5"})
		require.NoError(t, err)
		assert.Equal(t, 5, c.MaxInFlight)
	})
	t.Run("concurrent use", func(t *testing.T) {
		cfg := mustParse(t, with(map[string]string{"deliverPolicy": "new", "maxAckPending": "100"}))
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				c, err := cfg.ForSubscription(map[string]string{"maxInFlight": fmt.Sprint(i + 1)})
				assert.NoError(t, err)
				assert.Equal(t, i+1, c.MaxInFlight)
			})
		}
		wg.Wait()
		assert.Equal(t, 100, cfg.Consumer.MaxInFlight)
	})
}

// componentMetadata mirrors Dapr's component-metadata schema (v1), so that
// unknown keys in metadata.yaml are rejected.
type componentMetadata struct {
	SchemaVersion          string                  `yaml:"schemaVersion"`
	Type                   string                  `yaml:"type"`
	Name                   string                  `yaml:"name"`
	Version                string                  `yaml:"version"`
	Status                 string                  `yaml:"status"`
	Title                  string                  `yaml:"title"`
	Description            string                  `yaml:"description"`
	URLs                   []metadataURL           `yaml:"urls"`
	Capabilities           []string                `yaml:"capabilities"`
	AuthenticationProfiles []authenticationProfile `yaml:"authenticationProfiles"`
	Metadata               []metadataField         `yaml:"metadata"`
}

type metadataURL struct {
	Title string `yaml:"title"`
	URL   string `yaml:"url"`
}

type authenticationProfile struct {
	Title       string          `yaml:"title"`
	Description string          `yaml:"description"`
	Metadata    []metadataField `yaml:"metadata"`
}

type metadataField struct {
	Name          string       `yaml:"name"`
	Description   string       `yaml:"description"`
	Required      bool         `yaml:"required"`
	Sensitive     bool         `yaml:"sensitive"`
	Type          string       `yaml:"type"`
	Default       string       `yaml:"default"`
	Example       string       `yaml:"example"`
	AllowedValues []string     `yaml:"allowedValues"`
	URL           *metadataURL `yaml:"url"`
	Deprecated    bool         `yaml:"deprecated"`
}

func loadMetadataYAML(t *testing.T) (componentMetadata, []byte) {
	t.Helper()
	raw, err := os.ReadFile("metadata.yaml")
	require.NoError(t, err)
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	var md componentMetadata
	require.NoError(t, dec.Decode(&md))
	return md, raw
}

func TestMetadataYAMLMatchesProperties(t *testing.T) {
	md, _ := loadMetadataYAML(t)

	inYAML := map[string]bool{}
	add := func(where string, fields []metadataField) {
		seen := map[string]bool{}
		for _, f := range fields {
			assert.Falsef(t, seen[f.Name], "%s lists %q twice", where, f.Name)
			seen[f.Name] = true
			inYAML[f.Name] = true
		}
	}
	add("metadata", md.Metadata)
	for _, p := range md.AuthenticationProfiles {
		add("profile "+p.Title, p.Metadata)
	}

	inProps := map[string]bool{}
	for tag := range propertyTags() {
		if tag != "consumerID" { // daprd injects it
			inProps[tag] = true
		}
	}
	assert.Equal(t, sortedKeys(inProps), sortedKeys(inYAML))
}

func TestMetadataYAMLSchema(t *testing.T) {
	md, raw := loadMetadataYAML(t)
	assert.Equal(t, "v1", md.SchemaVersion)
	assert.Equal(t, "pubsub", md.Type)
	assert.Equal(t, "nats-jetstream", md.Name)
	assert.Equal(t, "v1", md.Version)
	assert.Equal(t, "alpha", md.Status)
	assert.Equal(t, "NATS JetStream (pluggable)", md.Title)
	require.NotEmpty(t, md.URLs)
	for _, u := range md.URLs {
		assert.NotEmpty(t, u.Title)
		assert.True(t, strings.HasPrefix(u.URL, "https://"), u.URL)
	}

	tags := propertyTags()
	wantType := func(name string) string {
		typ := tags[name]
		if typ == nil {
			return ""
		}
		if typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch {
		case typ == reflect.TypeFor[time.Duration]():
			return "duration"
		case typ.Kind() == reflect.Bool:
			return "bool"
		case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
			return "number"
		default:
			return "string"
		}
	}
	// Keys that need others to be valid get them.
	companions := map[string]map[string]string{
		"streamSubjects": {"streamName": "ORDERS"},
		"priorityPolicy": {"consumerID": "app"},
		"pinnedTTL":      {"consumerID": "app", "priorityPolicy": "pinned"},
		"minPending":     {"consumerID": "app", "priorityPolicy": "overflow"},
	}
	check := func(t *testing.T, f metadataField) {
		assert.NotEmpty(t, f.Description)
		assert.NotEmpty(t, f.Example, "the schema requires an example")
		typ := f.Type
		if typ == "" {
			typ = "string"
		}
		assert.Contains(t, []string{"string", "number", "bool", "duration", "bytesize"}, typ)
		assert.Equal(t, wantType(f.Name), typ, "type of %s", f.Name)
		assert.Equal(t, secretFields[strings.ToLower(f.Name)], f.Sensitive, "sensitive")
		for _, v := range f.AllowedValues {
			props := with(companions[f.Name])
			props[f.Name] = v
			_, err := Parse(props)
			if f.Name == "deliverPolicy" && (v == "sequence" || v == "time") {
				requireFieldErr(t, err, "deliverPolicy", "needs a start", "")
				continue
			}
			assert.NoError(t, err, "allowed value %q", v)
		}
		if len(f.AllowedValues) > 0 && f.Default != "" {
			assert.Contains(t, f.AllowedValues, f.Default)
		}
	}
	for _, p := range md.AuthenticationProfiles {
		t.Run(p.Title, func(t *testing.T) {
			assert.NotEmpty(t, p.Description)
			names := map[string]string{}
			for _, f := range p.Metadata {
				t.Run(f.Name, func(t *testing.T) { check(t, f) })
				names[f.Name] = f.Example
			}
			require.Contains(t, names, "natsURL")
			// The examples of a profile make a valid configuration.
			_, err := Parse(names)
			assert.NoError(t, err)
			for _, f := range p.Metadata {
				assert.Truef(t, f.Required, "%s is required in its profile", f.Name)
			}
		})
	}
	empty := mustParse(t, with(nil))
	for _, f := range md.Metadata {
		t.Run(f.Name, func(t *testing.T) {
			check(t, f)
			assert.False(t, f.Required, "only natsURL is required, and it is in the profiles")
			// The example is a valid value.
			props := with(companions[f.Name])
			props[f.Name] = f.Example
			_, err := Parse(props)
			assert.NoError(t, err, "example %q", f.Example)
			// The default is what an absent field gives.
			if f.Default != "" {
				cfg := mustParse(t, with(map[string]string{f.Name: f.Default}))
				assert.Equal(t, empty.Connection, cfg.Connection)
				stream := cfg.Stream
				stream.Given = nil // records that the key was set, which it was
				assert.Equal(t, empty.Stream, stream)
				assert.Equal(t, empty.Publish, cfg.Publish)
				consumer := cfg.Consumer
				consumer.MaxAckPendingGiven = false // the same
				assert.Equal(t, empty.Consumer, consumer)
			}
		})
	}

	// Defaults and examples are quoted strings, as the schema requires.
	var generic map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &generic))
	var fields []any
	fields = append(fields, generic["metadata"].([]any)...)
	for _, p := range generic["authenticationProfiles"].([]any) {
		fields = append(fields, p.(map[string]any)["metadata"].([]any)...)
	}
	for _, f := range fields {
		m := f.(map[string]any)
		for _, k := range []string{"default", "example"} {
			if v, ok := m[k]; ok {
				assert.IsTypef(t, "", v, "%s of %v must be a quoted string", k, m["name"])
			}
		}
	}
}

func TestMetadataYAMLDefaults(t *testing.T) {
	md, _ := loadMetadataYAML(t)
	defaults := map[string]string{}
	for _, f := range md.Metadata {
		defaults[f.Name] = f.Default
	}
	want := map[string]string{
		"ackWait":               "30s",
		"maxAckPending":         "1000",
		"maxInFlight":           "100",
		"autoProvision":         "true",
		"streamStorage":         "file",
		"streamReplicas":        "1",
		"streamMaxMsgs":         "-1",
		"streamMaxBytes":        "-1",
		"streamDuplicateWindow": "2m",
		"reconnectWait":         "2s",
		"connectTimeout":        "5s",
		"name":                  "dapr-nats-jetstream",
		"concurrency":           "single",
		"ackPolicy":             "explicit",
		"maxDeliver":            "-1",
		"nakDelay":              "0s",
	}
	for name, d := range want {
		assert.Equal(t, d, defaults[name], name)
	}
	assert.Empty(t, defaults["deliverPolicy"], "deliverPolicy has no single default value")
	for _, f := range md.Metadata {
		if f.Name == "deliverPolicy" {
			assert.Contains(t, f.Description, "moment the subscription")
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Errors never lose ErrInvalid, whatever wraps them.
func TestErrorsWrapErrInvalid(t *testing.T) {
	for _, err := range []error{
		fieldErr("x", "y", "z", "w"),
		conflict("p", "f", "a", "b"),
		fmt.Errorf("subscription metadata: %w", errors.Join(fieldErr("x", "", "z", ""), conflict("p", "", "a"))),
	} {
		assert.ErrorIs(t, err, ErrInvalid)
	}
	assert.Equal(t, `metadata fields "a" and "b": p`, conflict("p", "", "a", "b").Error())
	assert.Equal(t, `metadata field "x": z`, fieldErr("x", "", "z", "").Error())
}

// A whole number of seconds too large for a duration is refused with the
// value as written: Dapr's decoder multiplies it into nanoseconds and wraps,
// so 20000000000 would become about 49 years, and 2^63-1 would become -1s.
func TestParseDurationSecondsOutOfRange(t *testing.T) {
	for tag, typ := range propertyTags() {
		if typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ != reflect.TypeFor[time.Duration]() {
			continue
		}
		list := propertyTags()[tag].Kind() == reflect.Slice
		for _, v := range []string{"20000000000", "9223372036854775807", "-20000000000"} {
			if list {
				v = "1s, " + v
			}
			t.Run(tag+"="+v, func(t *testing.T) {
				_, err := Parse(with(map[string]string{tag: v}))
				fe := requireFieldErr(t, err, tag, "is out of range", "at most 9223372036 seconds")
				assert.Equal(t, v, fe.Value)
				assert.Len(t, leaves(err), 1, "only the bad field is reported: %v", err)
				_, err = mustParse(t, with(nil)).ForSubscription(map[string]string{tag: v})
				if slices.Contains(consumerFields, tag) {
					requireFieldErr(t, err, tag, "is out of range", "at most 9223372036 seconds")
				}
			})
		}
	}
	cfg := mustParse(t, map[string]string{"natsURL": testURL, "ackWait": "9223372036"})
	assert.Equal(t, 9223372036*time.Second, cfg.Consumer.AckWait)
}
