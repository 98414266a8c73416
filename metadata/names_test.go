package metadata

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var hashSuffix = regexp.MustCompile(`-[0-9a-f]{8}$`)

func TestValidName(t *testing.T) {
	cases := []struct {
		name string
		want bool
	}{
		{"orders", true},
		{"ORDERS-v1_2", true},
		{"ünïcödé-名前", true},
		{"$sys", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{strings.Repeat("a", 256), false},
		{"a.b", false},
		{"a*", false},
		{"a>", false},
		{"a b", false},
		{"a\tb", false},
		{"a\u00a0b", false}, // no-break space
		{"a/b", false},
		{`a\b`, false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"a\xffb", false},   // invalid UTF-8
		{"a\uFFFDb", false}, // the replacement character
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, ValidName(tc.name), "%q", tc.name)
	}
}

func TestSanitizeNameKeepsCleanNames(t *testing.T) {
	for _, s := range []string{"orders", "ORDERS", "my-durable_1", "ünïcödé-名前", "a-b", strings.Repeat("x", MaxNameLen)} {
		assert.Equal(t, s, SanitizeName(s), "%q", s)
	}
	assert.Equal(t, "durable-orders", SanitizeName("durable", "orders"))
	assert.Equal(t, "a-b-c", SanitizeName("a", "b", "c"))
}

func TestSanitizeNameReplaces(t *testing.T) {
	cases := []struct {
		in   []string
		base string
	}{
		{[]string{"a.b"}, "a_b"},
		{[]string{"a*b"}, "a_b"},
		{[]string{"a>b"}, "a_b"},
		{[]string{"a b"}, "a_b"},
		{[]string{"a/b"}, "a_b"},
		{[]string{`a\b`}, "a_b"},
		{[]string{"a\tb"}, "a_b"},
		{[]string{"a\nb"}, "a_b"},
		{[]string{"a\x00b"}, "a_b"},
		{[]string{"a\x7fb"}, "a_b"},
		{[]string{"a\uFFFDb"}, "a_b"},
		{[]string{"a\xffb"}, "a_b"},
		{[]string{"orders.>"}, "orders__"},
		{[]string{"orders.*.new"}, "orders___new"},
		{[]string{" x "}, "_x_"},
		{[]string{"durable", "orders.new"}, "durable-orders_new"},
		{[]string{""}, "_"},
		{nil, "_"},
	}
	for _, tc := range cases {
		got := SanitizeName(tc.in...)
		assert.Regexp(t, "^"+regexp.QuoteMeta(tc.base)+`-[0-9a-f]{8}$`, got, "%q", tc.in)
		assert.True(t, ValidName(got), "%q -> %q", tc.in, got)
	}
	// An empty part is just an empty part: "-a" is a valid name as it is.
	assert.Equal(t, "-a", SanitizeName("", "a"))
	assert.Equal(t, "-a", SanitizeName("-a"))
}

func TestSanitizeNameDistinct(t *testing.T) {
	groups := [][]string{
		{"a.b", "a_b", "a*b", "a>b", "a b", "a/b", `a\b`, "a\xffb"},
		{"orders.>", "orders.*", "orders__", "orders._", "orders_."},
	}
	for _, g := range groups {
		seen := map[string]string{}
		for _, s := range g {
			got := SanitizeName(s)
			if prev, dup := seen[got]; dup {
				t.Errorf("SanitizeName(%q) == SanitizeName(%q) == %q", s, prev, got)
			}
			seen[got] = s
		}
	}
	// Part boundaries that need sanitizing are kept apart by the hash.
	assert.NotEqual(t, SanitizeName("a.b", "c"), SanitizeName("a", "b.c"))
	// Long names that differ only past the cut.
	long := strings.Repeat("t", 300)
	assert.NotEqual(t, SanitizeName(long+"1"), SanitizeName(long+"2"))
	assert.NotEqual(t, SanitizeName(long), SanitizeName(long[:MaxNameLen+1]))
}

func TestSanitizeNameDeterministic(t *testing.T) {
	for _, s := range []string{"a.b", "orders", strings.Repeat("é.", 200), "\xff"} {
		assert.Equal(t, SanitizeName(s), SanitizeName(s))
		assert.Equal(t, SanitizeName(s, "x"), SanitizeName(s, "x"))
	}
}

func TestSanitizeNameLength(t *testing.T) {
	const kb10 = 10 * 1024
	inputs := map[string]string{
		"clean ascii":           strings.Repeat("a", kb10),
		"dots":                  strings.Repeat(".", kb10),
		"two-byte runes":        strings.Repeat("é", kb10/2),
		"three-byte runes":      strings.Repeat("日", kb10/3),
		"four-byte runes":       strings.Repeat("🙂", kb10/4),
		"mixed":                 strings.Repeat("a.日 é/🙂", kb10/16),
		"invalid UTF-8":         strings.Repeat("\xff\xfe", kb10/2),
		"invalid and runes":     strings.Repeat("é\xc3", kb10/3),
		"truncated rune at end": strings.Repeat("a", MaxNameLen) + "\xe6\x97",
		"one over":              strings.Repeat("b", MaxNameLen+1),
		"runes at the cut":      strings.Repeat("a", MaxNameLen-10) + strings.Repeat("日", 10),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			got := SanitizeName(in)
			assert.LessOrEqual(t, len(got), MaxNameLen)
			assert.True(t, ValidName(got), "%q", got)
			assert.True(t, utf8.ValidString(got))
			assert.Regexp(t, hashSuffix, got)
			got2 := SanitizeName("prefix", in)
			assert.LessOrEqual(t, len(got2), MaxNameLen)
			assert.True(t, ValidName(got2), "%q", got2)
		})
	}
	// Exactly MaxNameLen bytes of a clean name is kept.
	assert.Equal(t, strings.Repeat("日", MaxNameLen/3)+"ab", SanitizeName(strings.Repeat("日", MaxNameLen/3)+"ab"))
	// A shortened clean name keeps its beginning.
	got := SanitizeName(strings.Repeat("b", MaxNameLen+1))
	assert.Len(t, got, MaxNameLen)
	assert.True(t, strings.HasPrefix(got, strings.Repeat("b", MaxNameLen-9)))
}

func TestValidSubject(t *testing.T) {
	cases := []struct {
		subject   string
		wildcards bool
		problem   string // "" means valid
	}{
		{"orders", false, ""},
		{"orders.new", false, ""},
		{"ünï.cödé", false, ""},
		{"$JS.API.x", false, ""},
		{"a-b_c.D", false, ""},
		{"", false, "is empty"},
		{"", true, "is empty"},
		{"a b", true, "white space"},
		{" a", false, "white space"},
		{"a\tb", true, "white space"},
		{"a\nb", true, "white space"},
		{"a\u00a0b", true, "white space"},
		{"a\x00b", true, "control character"},
		{"a\x7fb", true, "control character"},
		{"a\xffb", true, "not valid UTF-8"},
		{"a..b", true, "empty token"},
		{".a", true, "empty token"},
		{"a.", true, "empty token"},
		{".", true, "empty token"},
		{"*", true, ""},
		{"*", false, "wildcard"},
		{">", true, ""},
		{">", false, "wildcard"},
		{"a.*", true, ""},
		{"a.*", false, "wildcard"},
		{"a.*.c", true, ""},
		{"a.>", true, ""},
		{"a.>", false, "wildcard"},
		{"*.*.>", true, ""},
		{"a.>.b", true, "> only the last"},
		{"a.>.b", false, "> only the last"},
		{">.a", true, "> only the last"},
		{"a*", true, "inside a token"},
		{"a*", false, "inside a token"},
		{"*a", true, "inside a token"},
		{"a.b>", true, "inside a token"},
		{"a.**", true, "inside a token"},
		{"a.>>", true, "inside a token"},
		{strings.Repeat("a", MaxSubjectLen), false, ""},
		{strings.Repeat("a", MaxSubjectLen+1), false, "longer than 2048 bytes"},
		{strings.Repeat("a", 10*1024), true, "longer than 2048 bytes"},
		{strings.Repeat("a.", 5*1024), true, "longer than 2048 bytes"},
	}
	for _, tc := range cases {
		err := ValidSubject(tc.subject, tc.wildcards)
		name := tc.subject
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		if tc.problem == "" {
			assert.NoError(t, err, "%q wildcards=%v", name, tc.wildcards)
			continue
		}
		if assert.Error(t, err, "%q wildcards=%v", name, tc.wildcards) {
			assert.Contains(t, err.Error(), tc.problem, "%q wildcards=%v", name, tc.wildcards)
		}
	}
}

func TestSubjectCovers(t *testing.T) {
	cases := []struct {
		pattern, sub string
		want         bool
	}{
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.b", "a.b.c", false},
		{"a.b.c", "a.b", false},
		{"a", "a", true},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.*", "a", false},
		{"a.*", "a.*", true},
		{"a.*", "a.>", false},
		{"a.*", "b.c", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.*.c", true},
		{"a.*.c", "a.b.d", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "a.*", true},
		{"a.>", "a.*.c", true},
		{"a.>", "a.>", true},
		{"a.>", "a", false},
		{"a.>", "b.c", false},
		{"a.b.>", "a.>", false},
		{"a.b.>", "a.*.c", false},
		{">", "a", true},
		{">", "a.b.c", true},
		{">", ">", true},
		{">", "*", true},
		{"*", "a", true},
		{"*", "*", true},
		{"*", ">", false},
		{"*", "a.b", false},
		{"*.b", "a.b", true},
		{"*.b", "*.b", true},
		{"*.b", ">", false},
		{"a.b", "a.*", false},
		{"a.b", "a.>", false},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, SubjectCovers(tc.pattern, tc.sub), "SubjectCovers(%q, %q)", tc.pattern, tc.sub)
	}
}

// A pattern covers a subject exactly when every literal subject matched by the
// subject is matched by the pattern; check against a small brute force.
func TestSubjectCoversAgreesWithMatching(t *testing.T) {
	tokens := []string{"a", "b", "*", ">"}
	var subjects []string
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		if depth == 0 {
			return
		}
		for _, tok := range tokens {
			s := tok
			if prefix != "" {
				s = prefix + "." + tok
			}
			if ValidSubject(s, true) == nil {
				subjects = append(subjects, s)
			}
			if tok != ">" {
				gen(s, depth-1)
			}
		}
	}
	gen("", 3)
	// Literal subjects of up to 4 tokens over {a, b, c}.
	var literals []string
	var lit func(prefix string, depth int)
	lit = func(prefix string, depth int) {
		if depth == 0 {
			return
		}
		for _, tok := range []string{"a", "b", "c"} {
			s := tok
			if prefix != "" {
				s = prefix + "." + tok
			}
			literals = append(literals, s)
			lit(s, depth-1)
		}
	}
	lit("", 4)
	for _, p := range subjects {
		for _, s := range subjects {
			want := true
			matched := false
			for _, l := range literals {
				if SubjectCovers(s, l) {
					matched = true
					if !SubjectCovers(p, l) {
						want = false
						break
					}
				}
			}
			// Subjects ending in > also match literals longer than we list;
			// those agree with the shorter ones for patterns of <= 3 tokens.
			require.True(t, matched)
			assert.Equal(t, want, SubjectCovers(p, s), "SubjectCovers(%q, %q)", p, s)
		}
	}
}

func TestSubjectsCover(t *testing.T) {
	cases := []struct {
		patterns []string
		sub      string
		want     bool
	}{
		{[]string{"orders.*", "orders.*.>"}, "orders.>", true},
		{[]string{"orders.*.>", "orders.*"}, "orders.>", true},
		{[]string{"orders.*"}, "orders.>", false},
		{[]string{"orders.*", "orders.*.*"}, "orders.>", false},
		{[]string{"orders.new", "orders.paid"}, "orders.*", false},
		{[]string{"orders.new", "orders.*"}, "orders.*", true},
		{[]string{"a.b.*", "a.*.c", "a.>"}, "a.b.c", true},
		{[]string{"*.x", "a.*"}, "a.*", true},
		{[]string{"*.x", "a.y"}, "a.*", false},
		{[]string{"a.x", "*.x", "b.>"}, "*.x", true},
		{[]string{"*", "*.>"}, ">", true},
		{[]string{"*", "*.*", "*.*.>"}, ">", true},
		{[]string{"*", "*.*.>"}, ">", false},
		{nil, "a", false},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, SubjectsCover(tc.patterns, tc.sub), "SubjectsCover(%q, %q)", tc.patterns, tc.sub)
	}
}

// A set of patterns covers a subject exactly when every literal subject the
// subject matches is matched by one of them; check every pair of patterns
// against the same brute force as one.
func TestSubjectsCoverAgreesWithMatching(t *testing.T) {
	var subjects []string
	var gen func(prefix string, depth int)
	gen = func(prefix string, depth int) {
		for _, tok := range []string{"a", "b", "*", ">"} {
			s := tok
			if prefix != "" {
				s = prefix + "." + tok
			}
			subjects = append(subjects, s)
			if tok != ">" && depth > 1 {
				gen(s, depth-1)
			}
		}
	}
	gen("", 3)
	var literals []string
	var lit func(prefix string, depth int)
	lit = func(prefix string, depth int) {
		for _, tok := range []string{"a", "b", "c"} {
			s := tok
			if prefix != "" {
				s = prefix + "." + tok
			}
			literals = append(literals, s)
			if depth > 1 {
				lit(s, depth-1)
			}
		}
	}
	// Patterns have at most 3 tokens, so a literal of 4 stands for any longer.
	lit("", 4)
	matches := make([][]bool, len(subjects))
	for i, s := range subjects {
		matches[i] = make([]bool, len(literals))
		for j, l := range literals {
			matches[i][j] = SubjectCovers(s, l)
		}
	}
	for p := range subjects {
		for q := range subjects {
			for s := range subjects {
				want := true
				for l := range literals {
					if matches[s][l] && !matches[p][l] && !matches[q][l] {
						want = false
						break
					}
				}
				pair := []string{subjects[p], subjects[q]}
				if got := SubjectsCover(pair, subjects[s]); got != want {
					t.Fatalf("SubjectsCover(%q, %q) = %v, want %v", pair, subjects[s], got, want)
				}
			}
		}
	}
}

func TestSanitizeNameJoinIsUnambiguous(t *testing.T) {
	assert.NotEqual(t, SanitizeName("a-b", "c"), SanitizeName("a", "b-c"))
	assert.Equal(t, "a-b-c", SanitizeName("a", "b-c"), "a base without a dash stays readable")
	assert.Regexp(t, `^order-svc-orders-[0-9a-f]{8}$`, SanitizeName("order-svc", "orders"))
}
