package metadata

import (
	"encoding/json"
	"errors"
	"net/url"
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
			// A clean join stays as it is, unless a part before the last
			// holds the separator: then the join is ambiguous and hashed.
			joined := strings.Join(parts, "-")
			ambiguous := strings.Contains(strings.Join(parts[:len(parts)-1], ""), "-")
			if ValidName(joined) && len(joined) <= MaxNameLen && !ambiguous && got != joined {
				t.Fatalf("clean name %q changed to %q", joined, got)
			}
		}
		// Different single names never share a result, nor do different
		// pairs (a durable base and a topic).
		if a != b && SanitizeName(a) == SanitizeName(b) {
			t.Fatalf("SanitizeName(%q) == SanitizeName(%q) == %q", a, b, SanitizeName(a))
		}
		if a != b && SanitizeName(a, b) == SanitizeName(b, a) {
			t.Fatalf("SanitizeName(%q, %q) == SanitizeName(%q, %q) == %q", a, b, b, a, SanitizeName(a, b))
		}
	})
}

// userInfoSafe are the characters a user or password may hold as they are;
// the others must be percent-encoded.
const userInfoSafe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;="

// FuzzNatsURLUserInfo checks, for any user and password in a list of two
// URLs, that nats.go is given exactly them, or that the error shows neither.
func FuzzNatsURLUserInfo(f *testing.F) {
	f.Add("alice", "s3cr,et")
	f.Add("alice", ",,")
	f.Add("to,ken", "p")
	f.Add("alice", "s3cr%2Cet")
	f.Add("alice", "s3cr,et/x")
	f.Add("alice", "s3cr,et,x?y")
	f.Add("al ice", "s3cr et")
	f.Add("alice", "50%off")
	f.Add("alice", "a@b,c")
	f.Add("", "")

	f.Fuzz(func(t *testing.T, user, password string) {
		natsURL := func(user, password string) string {
			return "nats://" + user + ":" + password + "@h1:4222, nats://" + user + ":" + password + "@h2:4222"
		}
		cfg, err := Parse(map[string]string{"natsURL": natsURL(user, password)})
		if err != nil {
			// A secret is only shown if the text comes from it: with other
			// letters and digits in its place (the same punctuation, so the
			// same mistakes) the text must be gone. The mask does not count.
			shown := func(err error) string { return strings.ReplaceAll(err.Error(), "***", "\x00") }
			other := func(s string) string {
				return strings.Map(func(r rune) rune {
					switch {
					case r >= 'a' && r <= 'z':
						return 'a' + (r-'a'+13)%26
					case r >= 'A' && r <= 'Z':
						return 'A' + (r-'A'+13)%26
					case r >= '0' && r <= '9':
						return '0' + (r-'0'+5)%10
					}
					return r
				}, s)
			}
			// A "://" in them reads as the start of a next URL, which
			// nothing can tell from one.
			for _, secret := range []string{user, password} {
				if len(secret) >= 4 && strings.Contains(shown(err), secret) && !strings.Contains(user+":"+password, "://") {
					_, err2 := Parse(map[string]string{"natsURL": natsURL(other(user), other(password))})
					if err2 == nil || !strings.Contains(shown(err2), secret) {
						t.Fatalf("%q appears in the error: %v", secret, err)
					}
				}
			}
			if strings.Trim(user, userInfoSafe) == "" && strings.Trim(password, userInfoSafe) == "" {
				t.Fatalf("user %q and password %q are refused: %v", user, password, err)
			}
			return
		}
		if strings.ContainsAny(user+password, "@/?#:") || strings.Contains(user, ":") {
			return
		}
		wantUser, err := url.PathUnescape(user)
		if err != nil {
			t.Fatalf("user %q is not valid percent-encoding, yet accepted", user)
		}
		wantPassword, err := url.PathUnescape(password)
		if err != nil {
			t.Fatalf("password %q is not valid percent-encoding, yet accepted", password)
		}
		// As nats.go's Connect splits its URL argument.
		var servers []*url.URL
		for s := range strings.SplitSeq(cfg.Connection.URL, ",") {
			if s = strings.TrimSpace(s); s != "" {
				u, err := url.Parse(s)
				if err != nil {
					t.Fatalf("nats.go cannot parse %q of %q", s, cfg.Connection.URL)
				}
				servers = append(servers, u)
			}
		}
		if len(servers) != 2 || servers[0].Host != "h1:4222" || servers[1].Host != "h2:4222" {
			t.Fatalf("nats.go would see %d servers in %q", len(servers), cfg.Connection.URL)
		}
		for _, s := range servers {
			if got, _ := s.User.Password(); s.User.Username() != wantUser || got != wantPassword {
				t.Fatalf("nats.go would send user %q password %q, not %q %q", s.User.Username(), got, wantUser, wantPassword)
			}
		}
	})
}
