package metadata

import (
	"strings"
	"testing"

	contribpubsub "github.com/dapr/components-contrib/pubsub"
	"github.com/dapr/dapr/pkg/scopes"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUnknownKeys(t *testing.T) {
	cases := []struct {
		name       string
		key        string
		reported   bool
		suggestion string
	}{
		{"known", "durableName", false, ""},
		{"known, upper case", "DURABLENAME", false, ""},
		{"known, lower case", "natsurl", false, ""},
		{"known, mixed case", "Tls_Client_Cert", false, ""},
		{"set by daprd", "consumerID", false, ""},
		{"set by daprd, another case", "CONSUMERID", false, ""},
		{"read by daprd: subscription scopes", "subscriptionScopes", false, ""},
		{"read by daprd: publishing scopes", "publishingScopes", false, ""},
		{"read by daprd: allowed topics", "allowedTopics", false, ""},
		{"read by daprd: protected topics, another case", "ProtectedTopics", false, ""},

		{"letters swapped", "durableNmae", true, "durableName"},
		{"letters swapped, another case", "DURABLENMAE", true, "durableName"},
		{"letter missing", "pasword", true, "password"},
		{"letter missing in a long key", "maxInFlght", true, "maxInFlight"},
		{"letter added", "ackWaitt", true, "ackWait"},
		{"plural", "streamReplica", true, "streamReplicas"},
		{"underscore", "nats_url", true, "natsURL"},
		{"abbreviated", "tls_client_crt", true, "tls_client_cert"},
		{"surrounding space", " natsURL", true, "natsURL"},
		{"short key, one letter off", "jwtt", true, "jwt"},

		{"garbage", "xyzzy", true, ""},
		{"garbage, long", "thisIsNotAKeyAtAll", true, ""},
		{"too far from a short key", "foo", true, ""},
		{"another component's key", "concurrencyMode", true, ""},
		{"empty key", "", true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := UnknownKeys(with(map[string]string{tc.key: "v"}))
			if !tc.reported {
				assert.Empty(t, got)
				return
			}
			assert.Equal(t, []UnknownKey{{Key: tc.key, Suggestion: tc.suggestion}}, got)
		})
	}
}

func TestUnknownKeysSorted(t *testing.T) {
	got := UnknownKeys(map[string]string{
		"natsURL": testURL, "xyzzy": "1", "durableNmae": "2", "ACKWAIT": "3", "ackWiat": "4", "consumerID": "app",
	})
	assert.Equal(t, []UnknownKey{
		{Key: "ackWiat", Suggestion: "ackWait"},
		{Key: "durableNmae", Suggestion: "durableName"},
		{Key: "xyzzy"},
	}, got)
	assert.Empty(t, UnknownKeys(nil))
	assert.Empty(t, UnknownKeys(map[string]string{}))
}

func TestUnknownKeysWarning(t *testing.T) {
	assert.Equal(t,
		`metadata key "durableNmae" is not known and is ignored; did you mean "durableName"? (keys are case-insensitive; see metadata.yaml)`,
		UnknownKeysWarning([]UnknownKey{{Key: "durableNmae", Suggestion: "durableName"}}))
	assert.Equal(t,
		`metadata key "xyzzy" is not known and is ignored (keys are case-insensitive; see metadata.yaml)`,
		UnknownKeysWarning([]UnknownKey{{Key: "xyzzy"}}))
	assert.Equal(t,
		`metadata keys "ackWiat" (did you mean "ackWait"?), "xyzzy" and "durableNmae" (did you mean "durableName"?) are not known and are ignored (keys are case-insensitive; see metadata.yaml)`,
		UnknownKeysWarning([]UnknownKey{{Key: "ackWiat", Suggestion: "ackWait"}, {Key: "xyzzy"}, {Key: "durableNmae", Suggestion: "durableName"}}))
	assert.Empty(t, UnknownKeysWarning(nil))
	// A key is quoted, so a line break in it cannot forge a log line.
	assert.NotContains(t, UnknownKeysWarning([]UnknownKey{{Key: "a\nb"}}), "\n")
}

// Every key metadata.yaml documents, and every key Parse reads, is known.
func TestUnknownKeysKnowsMetadataYAML(t *testing.T) {
	md, _ := loadMetadataYAML(t)
	names := map[string]string{}
	for _, f := range md.Metadata {
		names[f.Name] = "v"
	}
	for _, p := range md.AuthenticationProfiles {
		for _, f := range p.Metadata {
			names[f.Name] = "v"
		}
	}
	require.Greater(t, len(names), 40, "metadata.yaml was not read")
	assert.Empty(t, UnknownKeys(names))

	upper := map[string]string{}
	for name := range names {
		upper[strings.ToUpper(name)] = "v"
	}
	assert.Empty(t, UnknownKeys(upper))

	tags := map[string]string{}
	for tag := range propertyTags() {
		tags[tag] = "v"
	}
	assert.Empty(t, UnknownKeys(tags))
}

// The keys daprd sets or reads in a pub/sub component's metadata, named as in
// its source, are never reported.
func TestUnknownKeysKnowsDaprKeys(t *testing.T) {
	props := with(nil)
	for _, k := range []string{
		contribpubsub.RuntimeConsumerIDKey,
		scopes.SubscriptionScopes, scopes.PublishingScopes, scopes.AllowedTopics, scopes.ProtectedTopics,
	} {
		props[k] = "v"
	}
	assert.Empty(t, UnknownKeys(props))
}

func TestUnknownSubscriptionKeys(t *testing.T) {
	cases := []struct {
		name     string
		key      string
		reported bool
		want     UnknownKey
	}{
		{"subscription setting", "maxInFlight", false, UnknownKey{}},
		{"subscription setting, another case", "PRIORITYPOLICY", false, UnknownKey{}},
		{"read by daprd", "rawPayload", false, UnknownKey{}},
		{"misspelt", "priorityPolicyy", true, UnknownKey{Key: "priorityPolicyy", Suggestion: "priorityPolicy"}},
		{"misspelt, near a component key only", "streamNam", true, UnknownKey{Key: "streamNam", Suggestion: "streamName", ComponentOnly: true}},
		{"component setting", "streamName", true, UnknownKey{Key: "streamName", ComponentOnly: true}},
		{"component setting, another case", "NATSURL", true, UnknownKey{Key: "NATSURL", ComponentOnly: true}},
		{"nothing near", "partitionKey", true, UnknownKey{Key: "partitionKey"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := UnknownSubscriptionKeys(map[string]string{tc.key: "v"})
			if !tc.reported {
				assert.Empty(t, got)
				return
			}
			require.Len(t, got, 1)
			assert.Equal(t, tc.want, got[0])
		})
	}
	assert.Empty(t, UnknownSubscriptionKeys(nil))
}

func TestUnknownSubscriptionKeysWarning(t *testing.T) {
	assert.Equal(t, "", UnknownSubscriptionKeysWarning(nil))
	assert.Equal(t, `subscription metadata key "priorityPolicyy" is not read by this component and is ignored; did you mean "priorityPolicy"? (keys are case-insensitive; see metadata.yaml)`,
		UnknownSubscriptionKeysWarning(UnknownSubscriptionKeys(map[string]string{"priorityPolicyy": "pinned"})))
	assert.Equal(t, `subscription metadata keys "partitionKey" and "streamName" (a Component setting: set it in the Component) are not read by this component and are ignored (keys are case-insensitive; see metadata.yaml)`,
		UnknownSubscriptionKeysWarning(UnknownSubscriptionKeys(map[string]string{"streamName": "S", "partitionKey": "k"})))
	assert.Equal(t, `subscription metadata key "streamName" is not read by this component and is ignored; it is a Component setting: set it in the Component (keys are case-insensitive; see metadata.yaml)`,
		UnknownSubscriptionKeysWarning(UnknownSubscriptionKeys(map[string]string{"streamName": "S"})))
}
