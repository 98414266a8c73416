package docs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const contributing = "CONTRIBUTING.md"

// TestLayoutNamesFolders checks the layout table of CONTRIBUTING.md against
// the repository: it names every folder under test/ and every folder that
// holds a Go package of the module, and every path it names exists.
func TestLayoutNamesFolders(t *testing.T) {
	md, err := os.ReadFile(filepath.Join(root, contributing))
	if err != nil {
		t.Fatal(err)
	}
	named, err := layoutPaths(string(md))
	if err != nil {
		t.Fatalf("%s: %v", contributing, err)
	}
	want, err := foldersToName()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range unnamed(want, named) {
		t.Errorf("%s: the layout table does not name %s/", contributing, p)
	}
	for p := range named {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s: the layout table names %s, which does not exist", contributing, p)
		}
	}
}

// layoutPaths returns the paths in the first column of the table under the
// "## Layout" heading, without a trailing slash.
func layoutPaths(md string) (map[string]bool, error) {
	sec, ok := section(md, "## Layout")
	if !ok {
		return nil, errNoLayout
	}
	out := map[string]bool{}
	for i, l := range strings.Split(sec, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "|") {
			continue
		}
		first := strings.Split(strings.Trim(l, "|"), "|")[0]
		if i == 0 || strings.Trim(first, "-: ") == "" {
			continue
		}
		for _, m := range codeName.FindAllStringSubmatch(first, -1) {
			out[strings.TrimSuffix(m[1], "/")] = true
		}
	}
	if len(out) == 0 {
		return nil, errNoLayout
	}
	return out, nil
}

var errNoLayout = errors.New(`no table of paths under "## Layout"`)

// section returns the text under a heading line up to the next heading of
// the same or a higher level, outside code blocks.
func section(md, title string) (string, bool) {
	level := strings.Count(strings.Fields(title)[0], "#")
	lines := strings.Split(md, "\n")
	code := fenced(lines)
	start := -1
	for i, l := range lines {
		if code[i] {
			continue
		}
		if start < 0 {
			if strings.TrimSpace(l) == title {
				start = i + 1
			}
			continue
		}
		if m := heading.FindStringSubmatch(l); m != nil && len(m[1]) <= level {
			return strings.Join(lines[start:i], "\n"), true
		}
	}
	if start < 0 {
		return "", false
	}
	return strings.Join(lines[start:], "\n"), true
}

// foldersToName returns, relative to the repository root, every folder
// directly under test/ and every folder of the module that holds Go files.
// Folders with their own go.mod (the daprd builds) belong to other modules,
// and hidden folders, bin/ and testdata/ are left out.
func foldersToName() ([]string, error) {
	set := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(root, "test"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() {
			set["test/"+e.Name()] = true
		}
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata") {
				return filepath.SkipDir
			}
			if rel != "." {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if dir := filepath.ToSlash(filepath.Dir(rel)); strings.HasSuffix(rel, ".go") && dir != "." {
			set[dir] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sortedNames(set), nil
}

// unnamed returns the folders of want that the table does not name.
func unnamed(want []string, named map[string]bool) []string {
	var out []string
	for _, p := range want {
		if !named[p] {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func TestLayoutPaths(t *testing.T) {
	md := strings.Join([]string{
		"# Contributing",
		"## Layout",
		"| path | concern |",
		"|---|---|",
		"| `main.go` | wiring |",
		"| `Dockerfile`, `deploy/` | the image |",
		"| `test/e2e/` | end to end |",
		"## Tests",
		"| `test/faults/` | not in the layout |",
	}, "\n")
	got, err := layoutPaths(md)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"main.go": true, "Dockerfile": true, "deploy": true, "test/e2e": true}
	if len(got) != len(want) {
		t.Errorf("layoutPaths = %v, want %v", got, want)
	}
	for p := range want {
		if !got[p] {
			t.Errorf("layoutPaths = %v, want %v", got, want)
		}
	}
	if u := unnamed([]string{"test/e2e", "test/faults"}, got); len(u) != 1 || u[0] != "test/faults" {
		t.Errorf("unnamed = %q, want [test/faults]", u)
	}
	if _, err := layoutPaths("# Contributing\n## Tests\n"); err == nil {
		t.Error("no error for a file without a layout")
	}
}
