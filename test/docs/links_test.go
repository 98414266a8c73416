// Package docs checks the Markdown documentation of the repository: that its
// links resolve, that docs/metadata.md documents the fields of
// metadata/metadata.yaml, and that CONTRIBUTING.md's layout names the folders.
package docs

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// root is the repository root, seen from this package's folder.
const root = "../.."

// docPatterns are the Markdown files whose links are checked, relative to the
// repository root.
var docPatterns = []string{"README.md", "CONTRIBUTING.md", "docs/*.md"}

// TestLinksResolve checks every relative link of the documentation: the file
// or folder it names exists in the repository, and a #fragment names a
// heading of the Markdown file it points to (or of the same file).
func TestLinksResolve(t *testing.T) {
	files := docFiles(t)
	for _, f := range files {
		for _, p := range brokenLinks(f) {
			t.Error(p)
		}
	}
}

// docFiles returns the documentation files, relative to the repository root.
func docFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, p := range docPatterns {
		m, err := filepath.Glob(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			rel, err := filepath.Rel(root, f)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, filepath.ToSlash(rel))
		}
	}
	if len(files) == 0 || files[0] != "README.md" {
		t.Fatalf("README.md not found under %s", root)
	}
	return files
}

// link is one link target found in a Markdown file.
type link struct {
	line   int
	target string
}

var (
	// [text](target) and ![alt](target), with an optional "title".
	inlineLink = regexp.MustCompile(`\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	// [label]: target
	refLink    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
	doubleCode = regexp.MustCompile("``[^`]*``")
	singleCode = regexp.MustCompile("`[^`]*`")
	htmlAnchor = regexp.MustCompile(`<a\s+(?:id|name)="([^"]+)"`)
	heading    = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	headLink   = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// fenced reports, for each line of md, whether it is inside (or is a fence of)
// a fenced code block.
func fenced(lines []string) []bool {
	out := make([]bool, len(lines))
	fence := ""
	for i, l := range lines {
		s := strings.TrimLeft(l, " ")
		switch {
		case fence == "" && (strings.HasPrefix(s, "```") || strings.HasPrefix(s, "~~~")):
			fence = s[:3]
			out[i] = true
		case fence != "":
			out[i] = true
			if strings.HasPrefix(s, fence) && strings.Trim(s, fence[:1]) == "" {
				fence = ""
			}
		}
	}
	return out
}

// links returns the link targets of a Markdown text, leaving out code blocks
// and code spans.
func links(md string) []link {
	lines := strings.Split(md, "\n")
	code := fenced(lines)
	var out []link
	for i, l := range lines {
		if code[i] {
			continue
		}
		l = singleCode.ReplaceAllString(doubleCode.ReplaceAllString(l, ""), "")
		for _, m := range inlineLink.FindAllStringSubmatch(l, -1) {
			out = append(out, link{i + 1, m[1]})
		}
		if m := refLink.FindStringSubmatch(l); m != nil {
			out = append(out, link{i + 1, m[1]})
		}
	}
	return out
}

// anchors returns the fragments that the headings (and HTML anchors) of a
// Markdown text define, as GitHub renders them.
func anchors(md string) map[string]bool {
	lines := strings.Split(md, "\n")
	code := fenced(lines)
	out := map[string]bool{}
	seen := map[string]int{}
	for i, l := range lines {
		if code[i] {
			continue
		}
		for _, m := range htmlAnchor.FindAllStringSubmatch(l, -1) {
			out[m[1]] = true
		}
		m := heading.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		s := slug(m[2])
		if n := seen[s]; n > 0 {
			out[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			out[s] = true
		}
		seen[s]++
	}
	return out
}

// slug turns a heading into its fragment the way GitHub does: the text of
// links is kept, letters are lowercased, spaces become hyphens, and what is
// not a letter, mark, number, connector (such as _) or hyphen is dropped.
func slug(h string) string {
	h = headLink.ReplaceAllString(h, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || unicode.IsLetter(r) || unicode.IsMark(r) || unicode.IsNumber(r) || unicode.Is(unicode.Pc, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// brokenLinks returns a problem for each relative link of file (relative to
// the repository root) that does not resolve.
func brokenLinks(file string) []string {
	md, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, l := range links(string(md)) {
		if p := checkLink(file, string(md), l.target); p != "" {
			problems = append(problems, fmt.Sprintf("%s:%d: link %q: %s", file, l.line, l.target, p))
		}
	}
	return problems
}

var scheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// checkLink returns what is wrong with one link target of file, or "".
func checkLink(file, md, target string) string {
	if scheme.MatchString(target) || strings.HasPrefix(target, "//") {
		return "" // another site
	}
	if target == "" {
		return "empty target"
	}
	path, frag, _ := strings.Cut(target, "#")
	dest := file
	if path != "" {
		if strings.HasPrefix(path, "/") {
			return "absolute path; use a path relative to the file"
		}
		dest = filepath.ToSlash(filepath.Join(filepath.Dir(file), path))
		if dest == ".." || strings.HasPrefix(dest, "../") {
			return "points outside the repository"
		}
		if _, err := os.Stat(filepath.Join(root, dest)); err != nil {
			return fmt.Sprintf("%s does not exist", dest)
		}
	}
	if frag == "" || !strings.HasSuffix(dest, ".md") {
		return ""
	}
	text := md
	if dest != file {
		b, err := os.ReadFile(filepath.Join(root, dest))
		if err != nil {
			return err.Error()
		}
		text = string(b)
	}
	if !anchors(text)[frag] {
		return fmt.Sprintf("%s has no heading for #%s", dest, frag)
	}
	return ""
}

// TestEveryDocLinkedFromREADME checks that the README links CONTRIBUTING.md
// and every page under docs/, so that none of them can only be found by
// browsing the repository.
func TestEveryDocLinkedFromREADME(t *testing.T) {
	md, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, l := range links(string(md)) {
		path, _, _ := strings.Cut(l.target, "#")
		if path != "" && !scheme.MatchString(path) {
			linked[filepath.ToSlash(filepath.Clean(path))] = true
		}
	}
	for _, f := range docFiles(t) {
		if f != "README.md" && !linked[f] {
			t.Errorf("README.md has no link to %s", f)
		}
	}
}
