// Package metadata turns the metadata of a Dapr Component (and of a single
// subscription) into typed, validated JetStream settings.
//
// It is pure: it never opens files or sockets. Paths (creds file, TLS files)
// are checked by the connection layer, which knows how to report them.
package metadata

import "time"

// Bool is a strict boolean: it accepts true/false (and 1/0, t/f) and rejects
// anything else, so that a typo such as "ture" is an error instead of false.
type Bool bool

// Properties mirrors the component metadata one field per key, as decoded by
// Dapr's metadata decoder. Pointers mark fields whose absence matters.
type Properties struct {
	// Connection.
	NatsURL        string        `mapstructure:"natsURL"`
	Name           string        `mapstructure:"name"`
	Token          string        `mapstructure:"token"`
	User           string        `mapstructure:"user"`
	Password       string        `mapstructure:"password"`
	JWT            string        `mapstructure:"jwt"`
	SeedKey        string        `mapstructure:"seedKey"`
	NKeySeed       string        `mapstructure:"nkeySeed"`
	CredsFile      string        `mapstructure:"credsFile"`
	TLSClientCert  string        `mapstructure:"tls_client_cert"`
	TLSClientKey   string        `mapstructure:"tls_client_key"`
	TLSCAFile      string        `mapstructure:"tls_ca_file"`
	Domain         string        `mapstructure:"domain"`
	APIPrefix      string        `mapstructure:"apiPrefix"`
	ReconnectWait  time.Duration `mapstructure:"reconnectWait"`
	ConnectTimeout time.Duration `mapstructure:"connectTimeout"`

	// Stream provisioning.
	StreamName              string         `mapstructure:"streamName"`
	AutoProvision           *Bool          `mapstructure:"autoProvision"`
	StreamSubjects          []string       `mapstructure:"streamSubjects"`
	StreamStorage           string         `mapstructure:"streamStorage"`
	StreamReplicas          *int           `mapstructure:"streamReplicas"`
	StreamMaxAge            *time.Duration `mapstructure:"streamMaxAge"`
	StreamMaxMsgs           *int64         `mapstructure:"streamMaxMsgs"`
	StreamMaxBytes          *int64         `mapstructure:"streamMaxBytes"`
	StreamDuplicateWindow   *time.Duration `mapstructure:"streamDuplicateWindow"`
	StreamRetention         string         `mapstructure:"streamRetention"`
	StreamDiscard           string         `mapstructure:"streamDiscard"`
	StreamMaxMsgSize        *int64         `mapstructure:"streamMaxMsgSize"`
	StreamMaxMsgsPerSubject *int64         `mapstructure:"streamMaxMsgsPerSubject"`
	StreamCompression       string         `mapstructure:"streamCompression"`
	StreamPlacementCluster  string         `mapstructure:"streamPlacementCluster"`
	StreamPlacementTags     []string       `mapstructure:"streamPlacementTags"`

	// Publish.
	BulkPublishAtomic *Bool `mapstructure:"bulkPublishAtomic"`

	// Consumer. These may also be set per subscription.
	ConsumerID     string          `mapstructure:"consumerID"`
	DurableName    string          `mapstructure:"durableName"`
	QueueGroupName string          `mapstructure:"queueGroupName"`
	DeliverPolicy  string          `mapstructure:"deliverPolicy"`
	DeliverAll     *Bool           `mapstructure:"deliverAll"`
	StartSequence  *uint64         `mapstructure:"startSequence"`
	StartTime      *int64          `mapstructure:"startTime"`
	AckPolicy      string          `mapstructure:"ackPolicy"`
	AckWait        *time.Duration  `mapstructure:"ackWait"`
	MaxDeliver     *int            `mapstructure:"maxDeliver"`
	BackOff        []time.Duration `mapstructure:"backOff"`
	NakDelay       *time.Duration  `mapstructure:"nakDelay"`
	MaxAckPending  *int            `mapstructure:"maxAckPending"`
	MaxInFlight    *int            `mapstructure:"maxInFlight"`
	Replicas       *int            `mapstructure:"replicas"`
	MemoryStorage  *Bool           `mapstructure:"memoryStorage"`
	RateLimit      *uint64         `mapstructure:"rateLimit"`
	Heartbeat      *time.Duration  `mapstructure:"heartbeat"`
	FlowControl    *Bool           `mapstructure:"flowControl"`
	Concurrency    string          `mapstructure:"concurrency"`
	// DeadLetterSubject may contain {topic}, the subject of the failed message.
	DeadLetterSubject string         `mapstructure:"deadLetterSubject"`
	PriorityPolicy    string         `mapstructure:"priorityPolicy"`
	PinnedTTL         *time.Duration `mapstructure:"pinnedTTL"`
	MinPending        *int64         `mapstructure:"minPending"`
}

// secretFields are never echoed back in an error or a log line.
var secretFields = map[string]bool{
	"token": true, "password": true, "jwt": true, "seedkey": true, "nkeyseed": true,
}

// consumerFields are the keys a subscription may override.
var consumerFields = []string{
	"consumerID", "durableName", "queueGroupName", "deliverPolicy", "deliverAll", "startSequence",
	"startTime", "ackPolicy", "ackWait", "maxDeliver", "backOff", "nakDelay", "maxAckPending",
	"maxInFlight", "replicas", "memoryStorage", "rateLimit", "heartbeat", "flowControl", "concurrency",
	"deadLetterSubject", "priorityPolicy", "pinnedTTL", "minPending",
}

// deliverFields decide where a new consumer starts. A subscription that sets any
// of them replaces the component's choice as a whole, so the two never clash.
var deliverFields = []string{"deliverPolicy", "deliverAll", "startSequence", "startTime"}
