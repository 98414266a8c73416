package metadata

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// UnknownKey is a component metadata key that nothing reads. Dapr's decoder
// skips such a key silently, so a misspelt field keeps its default.
type UnknownKey struct {
	Key string
	// Suggestion is the known key nearest to Key, or "" when none is near
	// enough to be what was meant.
	Suggestion string
	// ComponentOnly, for subscription metadata, says that Key (or its
	// Suggestion) is a setting of the Component, which a subscription cannot
	// change.
	ComponentOnly bool
}

// daprKeys reach a component's metadata without being fields of it: daprd
// sets consumerID (to the app ID when the component does not), and reads the
// topic scoping keys (subscriptionScopes, publishingScopes, allowedTopics,
// protectedTopics) from the same metadata it then hands to the component.
var daprKeys = []string{"consumerID", "subscriptionScopes", "publishingScopes", "allowedTopics", "protectedTopics"}

// knownKeys are the keys Parse reads, then daprKeys, each spelled once.
var knownKeys = func() []string {
	var keys []string
	for f := range reflect.TypeFor[Properties]().Fields() {
		keys = append(keys, f.Tag.Get("mapstructure"))
	}
	for _, k := range daprKeys {
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}()

// UnknownKeys returns the keys of props that are neither read by Parse nor
// set or read by daprd, sorted, each with the nearest known key if one is
// close. Keys are compared case-insensitively, as Dapr's decoder matches them.
func UnknownKeys(props map[string]string) []UnknownKey {
	var out []UnknownKey
	for k := range props {
		if containsFold(knownKeys, k) {
			continue
		}
		out = append(out, UnknownKey{Key: k, Suggestion: nearestKey(k)})
	}
	slices.SortFunc(out, func(a, b UnknownKey) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// UnknownKeysWarning words keys as one log line, or "" when there are none.
func UnknownKeysWarning(keys []UnknownKey) string {
	const note = " (keys are case-insensitive; see metadata.yaml)"
	switch len(keys) {
	case 0:
		return ""
	case 1:
		msg := fmt.Sprintf("metadata key %q is not known and is ignored", keys[0].Key)
		if s := keys[0].Suggestion; s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		}
		return msg + note
	}
	named := make([]string, len(keys))
	for i, k := range keys {
		named[i] = strconv.Quote(k.Key)
		if k.Suggestion != "" {
			named[i] += fmt.Sprintf(" (did you mean %q?)", k.Suggestion)
		}
	}
	last := len(named) - 1
	return "metadata keys " + strings.Join(named[:last], ", ") + " and " + named[last] + " are not known and are ignored" + note
}

// nearestKey returns the known key closest to key, or "" if even the closest
// differs by more than a short key can differ and still be recognisable: one
// edit for keys of up to 5 letters, two up to 10, three beyond.
func nearestKey(key string) string {
	return nearest(key, knownKeys)
}

// nearest is nearestKey among the given keys.
func nearest(key string, among []string) string {
	best, bestDist := "", -1
	for _, known := range among {
		d := editDistance(strings.ToLower(key), strings.ToLower(known))
		limit := 3
		switch n := len(known); {
		case n <= 5:
			limit = 1
		case n <= 10:
			limit = 2
		}
		if d <= limit && (bestDist < 0 || d < bestDist) {
			best, bestDist = known, d
		}
	}
	return best
}

// editDistance counts the insertions, deletions, substitutions and swaps of
// adjacent letters that turn a into b (the optimal string alignment
// distance), so that a swap such as "Nmae" for "Name" counts as one typo.
func editDistance(a, b string) int {
	x, y := []rune(a), []rune(b)
	// d[i][j] is the distance between x[:i] and y[:j].
	d := make([][]int, len(x)+1)
	for i := range d {
		d[i] = make([]int, len(y)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(x); i++ {
		for j := 1; j <= len(y); j++ {
			cost := 1
			if x[i-1] == y[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && x[i-1] == y[j-2] && x[i-2] == y[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(x)][len(y)]
}

// subscriptionKeys are the keys a subscription's metadata may set: the
// consumer settings, and rawPayload, which daprd reads.
var subscriptionKeys = append(slices.Clone(consumerFields), "rawPayload")

// UnknownSubscriptionKeys returns the keys of a subscription's metadata that
// neither ForSubscription nor daprd reads, sorted. A Component setting there
// (streamName, say) is ignored too, and marked ComponentOnly.
func UnknownSubscriptionKeys(props map[string]string) []UnknownKey {
	var out []UnknownKey
	for k := range props {
		if containsFold(subscriptionKeys, k) {
			continue
		}
		u := UnknownKey{Key: k, ComponentOnly: containsFold(knownKeys, k)}
		if !u.ComponentOnly {
			u.Suggestion = nearest(k, subscriptionKeys)
			if u.Suggestion == "" {
				u.Suggestion = nearestKey(k)
				u.ComponentOnly = u.Suggestion != ""
			}
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b UnknownKey) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// UnknownSubscriptionKeysWarning words keys as one log line, or "" when there
// are none.
func UnknownSubscriptionKeysWarning(keys []UnknownKey) string {
	const note = " (keys are case-insensitive; see metadata.yaml)"
	const componentOnly = "a Component setting: set it in the Component"
	switch len(keys) {
	case 0:
		return ""
	case 1:
		k := keys[0]
		msg := fmt.Sprintf("subscription metadata key %q is not read by this component and is ignored", k.Key)
		switch {
		case k.Suggestion != "" && k.ComponentOnly:
			msg += fmt.Sprintf("; did you mean %q? That is %s", k.Suggestion, componentOnly)
		case k.Suggestion != "":
			msg += fmt.Sprintf("; did you mean %q?", k.Suggestion)
		case k.ComponentOnly:
			msg += "; it is " + componentOnly
		}
		return msg + note
	}
	named := make([]string, len(keys))
	for i, k := range keys {
		named[i] = strconv.Quote(k.Key)
		switch {
		case k.Suggestion != "" && k.ComponentOnly:
			named[i] += fmt.Sprintf(" (did you mean %q? %s)", k.Suggestion, componentOnly)
		case k.Suggestion != "":
			named[i] += fmt.Sprintf(" (did you mean %q?)", k.Suggestion)
		case k.ComponentOnly:
			named[i] += " (" + componentOnly + ")"
		}
	}
	last := len(named) - 1
	return "subscription metadata keys " + strings.Join(named[:last], ", ") + " and " + named[last] + " are not read by this component and are ignored" + note
}

func containsFold(keys []string, key string) bool {
	return slices.ContainsFunc(keys, func(k string) bool { return strings.EqualFold(k, key) })
}
