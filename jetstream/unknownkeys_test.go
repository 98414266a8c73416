package jetstream

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A misspelt key would otherwise go unnoticed: the field it meant keeps its
// default.
func TestInitWarnsOfUnknownMetadataKeys(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)

	_, buf := open(t, ns.ClientURL(), map[string]string{
		"durableNmae": "orders", "xyzzy": "1", "consumerID": "app", "ACKWAIT": "10s", "allowedTopics": "a,b",
	})
	warnings := linesWith(buf.String(), "not known")
	if assert.Len(t, warnings, 1, "one warning per Init, listing every unknown key") {
		w := warnings[0]
		assert.Contains(t, w, "level=warn")
		for _, s := range []string{"durableNmae", "did you mean", "durableName", "xyzzy", "case-insensitive", "metadata.yaml"} {
			assert.Contains(t, w, s)
		}
		for _, known := range []string{"consumerID", "ACKWAIT", "allowedTopics"} {
			assert.NotContains(t, w, known)
		}
	}

	_, quiet := open(t, ns.ClientURL(), map[string]string{"durableName": "orders", "consumerID": "app"})
	assert.NotContains(t, quiet.String(), "not known")
}

// A misspelt subscription key, or a Component setting in a subscription,
// would otherwise change nothing without a word.
func TestSubscribeWarnsOfUnknownMetadataKeys(t *testing.T) {
	t.Parallel()
	ns, _ := startNATS(t)
	ps, buf := open(t, ns.ClientURL(), map[string]string{"consumerID": "app"})
	h, _ := collect()
	subscribe(t, ps, "keys", map[string]string{"maxInFlght": "5", "streamName": "OTHER", "rawPayload": "true", "maxAckPending": "50"}, h)
	warnings := linesWith(buf.String(), "subscription metadata key")
	if assert.Len(t, warnings, 1, "one warning per subscription, listing every unknown key") {
		w := warnings[0]
		assert.Contains(t, w, "level=warn")
		assert.Contains(t, w, "topic=keys", "the warning carries the topic")
		for _, s := range []string{`\"maxInFlght\" (did you mean \"maxInFlight\"?)`, `\"streamName\" (a Component setting: set it in the Component)`} {
			assert.Contains(t, w, s)
		}
		for _, known := range []string{"rawPayload", "maxAckPending"} {
			assert.NotContains(t, w, known)
		}
	}

	subscribe(t, ps, "quiet", map[string]string{"maxInFlight": "5"}, h)
	assert.Len(t, strings.Split(buf.String(), "subscription metadata key"), 2, "no warning for known keys")
}

// linesWith returns the lines of log that contain s.
func linesWith(log, s string) []string {
	var out []string
	for line := range strings.Lines(log) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}
