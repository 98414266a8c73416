package metadata

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzKeys are the metadata keys, so that "#n" can name the n-th of them and
// mutations reach every field.
var fuzzKeys = func() []string {
	var keys []string
	for f := range reflect.TypeFor[Properties]().Fields() {
		keys = append(keys, f.Tag.Get("mapstructure"))
	}
	return keys
}()

// fuzzProps turns "key=value" lines into metadata. A line without "=" is a
// key with an empty value; a key "#n" is the n-th metadata key (modulo their
// number). Keys spelled "token" are dropped: the fuzzer's token goes there.
func fuzzProps(kv string) map[string]string {
	props := map[string]string{}
	for line := range strings.SplitSeq(kv, "\n") {
		if line == "" {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		if n, err := strconv.Atoi(strings.TrimPrefix(k, "#")); err == nil && strings.HasPrefix(k, "#") && n >= 0 {
			k = fuzzKeys[n%len(fuzzKeys)]
		}
		if k == "token" {
			continue
		}
		props[k] = v
	}
	return props
}

func FuzzParse(f *testing.F) {
	f.Add("natsURL=nats://localhost:4222", "s3cret-token")
	f.Add("natsURL=nats://u:pw@localhost:4222\nuser=u\npassword=pw", "s3cret-token")
	f.Add("natsURL=http://x\nstreamReplicas=9\nackWait=abc\nstartSequence=0", "tok-123456")
	f.Add("NATSURL=nats://a:4222\nnatsURL=nats://b:4222\nTOKEN=x", "abcdef")
	f.Add("natsURL=nats://a:4222\ndeliverPolicy=all\nstartSequence=1\nmaxInFlight=2000", "metadata")
	f.Add("natsURL=nats://a:4222\nstreamName=S\nstreamSubjects=a.>,b.*,,c..d\nstreamMaxAge=1m", "")
	f.Add("natsURL=,\nbackOff=1s,-1s\nmaxDeliver=1\nheartbeat=1h", "\xff\xfe\xfd\xfc\xfb\xfa")
	f.Add("natsURL=nats://a:4222\nnkeySeed=SUABC\ncredsFile=/c\njwt=eyJ", "secret-value")
	f.Add("#0=nats://a:4222\n#5=x\n#20=1s\n#30=abc\n#40=5", "by-index")

	f.Fuzz(func(t *testing.T, kv, token string) {
		props := fuzzProps(kv)
		if token != "" {
			props["token"] = token
		}
		cfg, err := Parse(props)
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned both a Config and an error: %v", err)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if len(token) >= 6 && strings.Contains(err.Error(), token) {
				// Only a leak if the text comes from the token: with another
				// token of the same kind the text must not be there either.
				props["token"] = "placeholder-token"
				_, err2 := Parse(props)
				if err2 == nil || !strings.Contains(err2.Error(), token) {
					t.Fatalf("the token %q appears in the error: %v", token, err)
				}
			}
			return
		}
		if cfg == nil {
			t.Fatal("Parse returned neither a Config nor an error")
		}
		// A valid configuration gives valid subscriptions: the component's
		// consumer keys, given again, change nothing.
		if token != "" && cfg.Connection.Token != token {
			t.Fatalf("token not kept: %q", cfg.Connection.Token)
		}
		c, err := cfg.ForSubscription(pick(props, consumerFields))
		if err != nil {
			t.Fatalf("the component's own consumer keys fail as a subscription's: %v", err)
		}
		if c.MaxInFlight < 1 {
			t.Fatalf("MaxInFlight %d", c.MaxInFlight)
		}
		if c.MaxAckPending > 0 && c.MaxInFlight > c.MaxAckPending {
			t.Fatalf("MaxInFlight %d > MaxAckPending %d", c.MaxInFlight, c.MaxAckPending)
		}
		if cfg.Stream.MaxAge > 0 && cfg.Stream.DuplicateWindow > cfg.Stream.MaxAge {
			t.Fatalf("DuplicateWindow %v > MaxAge %v", cfg.Stream.DuplicateWindow, cfg.Stream.MaxAge)
		}
		// The start time is sent to the server as JSON, which holds no year
		// after 9999.
		if _, err := json.Marshal(c.StartTime); err != nil {
			t.Fatalf("StartTime %v cannot be sent: %v", c.StartTime, err)
		}
		// Subscription metadata made of the same lines never panics and,
		// when it fails, wraps ErrInvalid.
		if _, err := cfg.ForSubscription(props); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("subscription error does not wrap ErrInvalid: %v", err)
		}
	})
}

func FuzzSanitizeName(f *testing.F) {
	f.Add("orders", "")
	f.Add("orders.new", "durable")
	f.Add("a.b", "a_b")
	f.Add("", "")
	f.Add(strings.Repeat("日本", 100), "x")
	f.Add("\xff\xfe", "a b/c\\d")
	f.Add("\uFFFD", ">")

	f.Fuzz(func(t *testing.T, a, b string) {
		for _, parts := range [][]string{{a}, {b}, {a, b}, {b, a, b}} {
			got := SanitizeName(parts...)
			if !ValidName(got) {
				t.Fatalf("SanitizeName(%q) = %q is not a valid name", parts, got)
			}
			if len(got) > MaxNameLen {
				t.Fatalf("SanitizeName(%q) = %q is %d bytes", parts, got, len(got))
			}
			if !utf8.ValidString(got) {
				t.Fatalf("SanitizeName(%q) = %q is not UTF-8", parts, got)
			}
			if again := SanitizeName(parts...); again != got {
				t.Fatalf("SanitizeName(%q) not deterministic: %q then %q", parts, got, again)
			}
			joined := strings.Join(parts, "-")
			if ValidName(joined) && len(joined) <= MaxNameLen && got != joined {
				t.Fatalf("clean name %q changed to %q", joined, got)
			}
		}
		// Different single names never share a result.
		if a != b && SanitizeName(a) == SanitizeName(b) {
			t.Fatalf("SanitizeName(%q) == SanitizeName(%q) == %q", a, b, SanitizeName(a))
		}
	})
}
