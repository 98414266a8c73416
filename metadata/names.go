package metadata

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	// MaxNameLen bounds the stream and consumer names this component makes.
	// JetStream accepts 255 bytes; names are also directory names on the
	// server, so they are kept well below that.
	MaxNameLen = 128
	// MaxSubjectLen bounds topic names; NATS protocol lines are 4 KiB by default.
	MaxSubjectLen = 2048
)

// ValidName reports whether s can be used as a JetStream stream or consumer
// name as it is.
func ValidName(s string) bool {
	if s == "" || len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !nameRune(r) {
			return false
		}
	}
	return true
}

func nameRune(r rune) bool {
	switch r {
	case '.', '*', '>', '/', '\\', 0x7f:
		return false
	}
	return !unicode.IsSpace(r) && !unicode.IsControl(r) && r != utf8.RuneError
}

// SanitizeName joins parts with "-" into a valid JetStream name. Characters
// that are not allowed become "_". When that changes anything, when a part
// other than the last contains "-", or when the name must be shortened, a
// hash of the original parts is appended, so that two different inputs (say
// topics "a.b" and "a_b", or "a-b"+"c" and "a"+"b-c") never share a name.
func SanitizeName(parts ...string) string {
	raw := strings.Join(parts, "-")
	var b strings.Builder
	changed := !utf8.ValidString(raw)
	for _, r := range raw {
		if nameRune(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
			changed = true
		}
	}
	// "a-b"+"c" and "a"+"b-c" would both read a-b-c: a separator inside
	// any part but the last makes the join ambiguous, so hash it too.
	for _, p := range parts[:max(len(parts)-1, 0)] {
		changed = changed || strings.Contains(p, "-")
	}
	name := b.String()
	if name == "" {
		name, changed = "_", true
	}
	if !changed && len(name) <= MaxNameLen {
		return name
	}
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	suffix := "-" + hex.EncodeToString(sum[:4])
	if len(name)+len(suffix) > MaxNameLen {
		name = name[:MaxNameLen-len(suffix)]
		for !utf8.ValidString(name) {
			name = name[:len(name)-1]
		}
	}
	return name + suffix
}

// ValidSubject checks a NATS subject. Wildcards (* as a whole token, > as the
// last token) are allowed only when wildcards is true.
func ValidSubject(s string, wildcards bool) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxSubjectLen:
		return errors.New("is longer than 2048 bytes")
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return errors.New("contains white space or a control character")
		}
	}
	// Token by token without splitting: every publish checks its topic.
	for rest, more := s, true; more; {
		var t string
		t, rest, more = strings.Cut(rest, ".")
		switch {
		case t == "":
			return errors.New("has an empty token (a leading, trailing or double dot)")
		case t == "*" || (t == ">" && !more):
			if !wildcards {
				return errors.New("contains a wildcard (* or >), which is not allowed here")
			}
		case strings.ContainsAny(t, "*>"):
			return errors.New("uses * or > inside a token; a wildcard must be a whole token, and > only the last")
		}
	}
	return nil
}

// SubjectCovers reports whether every subject matched by sub is also matched
// by pattern (both may contain wildcards).
func SubjectCovers(pattern, sub string) bool {
	return tokensCover(strings.Split(pattern, "."), strings.Split(sub, "."))
}

// tokensCover is SubjectCovers on subjects split into tokens.
func tokensCover(pt, st []string) bool {
	for i, p := range pt {
		if p == ">" {
			return len(st) > i
		}
		if i >= len(st) {
			return false
		}
		switch {
		case p == "*":
			if st[i] == ">" {
				return false
			}
		case p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// SubjectsCollide reports whether some subject is matched by both a and b
// (either may contain wildcards).
func SubjectsCollide(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		switch {
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] == "*" || bt[i] == "*" || at[i] == bt[i]:
		default:
			return false
		}
	}
	return len(at) == len(bt)
}

// SubjectsCover reports whether every subject matched by sub is matched by
// at least one of patterns, which may share it out between them: orders.*
// and orders.*.> together cover orders.>, though neither does alone.
func SubjectsCover(patterns []string, sub string) bool {
	split := make([][]string, len(patterns))
	longest := 0
	for i, p := range patterns {
		split[i] = strings.Split(p, ".")
		longest = max(longest, len(split[i]))
	}
	return tokensCovered(split, strings.Split(sub, "."), longest)
}

// unlisted stands for any token that no pattern names; no subject holds it,
// since it is not a valid token.
const unlisted = "\x00"

// tokensCovered decides coverage one wildcard of sub at a time, from the
// left, so that the tokens before it are literal. A * is covered when it is
// for each token the patterns name at its place and for any other token;
// a > is one more token, or one more and then more. Beyond the longest
// pattern only a pattern ending in > can match, and it covers alone.
func tokensCovered(patterns [][]string, sub []string, longest int) bool {
	for _, p := range patterns {
		if tokensCover(p, sub) {
			return true
		}
	}
	i := slices.IndexFunc(sub, func(t string) bool { return t == "*" || t == ">" })
	if i < 0 {
		return false
	}
	with := func(tail ...string) []string { return append(slices.Clone(sub[:i]), tail...) }
	if sub[i] == ">" {
		return i < longest && tokensCovered(patterns, with("*"), longest) && tokensCovered(patterns, with("*", ">"), longest)
	}
	named := []string{unlisted}
	for _, p := range patterns {
		if i < len(p) && p[i] != "*" && p[i] != ">" && !slices.Contains(named, p[i]) {
			named = append(named, p[i])
		}
	}
	for _, t := range named {
		if !tokensCovered(patterns, with(append([]string{t}, sub[i+1:]...)...), longest) {
			return false
		}
	}
	return true
}
