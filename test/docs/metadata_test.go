package docs

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

const (
	schemaFile   = "metadata/metadata.yaml"
	metadataDocs = "docs/metadata.md"
)

// notInSchema are fields that docs/metadata.md documents but
// metadata/metadata.yaml leaves out on purpose: daprd sets consumerID itself.
var notInSchema = map[string]bool{"consumerID": true}

// TestMetadataDocsMatchSchema checks that docs/metadata.md documents, in its
// field tables, every field of metadata/metadata.yaml (the component's
// metadata schema), and no field that the schema does not have.
func TestMetadataDocsMatchSchema(t *testing.T) {
	schema, err := os.ReadFile(filepath.Join(root, schemaFile))
	if err != nil {
		t.Fatal(err)
	}
	inSchema, err := schemaFields(schema)
	if err != nil {
		t.Fatalf("%s: %v", schemaFile, err)
	}
	if len(inSchema) < 10 {
		t.Fatalf("%s: only %d fields found", schemaFile, len(inSchema))
	}
	md, err := os.ReadFile(filepath.Join(root, metadataDocs))
	if err != nil {
		t.Fatal(err)
	}
	documented, dups := documentedFields(string(md))
	for _, d := range dups {
		t.Errorf("%s: %s", metadataDocs, d)
	}
	for _, p := range compareFields(inSchema, documented) {
		t.Error(p)
	}
}

// schemaFields returns the field names of a component metadata schema: those
// of its authentication profiles and of its metadata list.
func schemaFields(b []byte) (map[string]bool, error) {
	type field struct {
		Name string `yaml:"name"`
	}
	var s struct {
		AuthenticationProfiles []struct {
			Metadata []field `yaml:"metadata"`
		} `yaml:"authenticationProfiles"`
		Metadata []field `yaml:"metadata"`
	}
	if err := yaml.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	out := map[string]bool{}
	add := func(fs []field) {
		for _, f := range fs {
			out[f.Name] = true
		}
	}
	add(s.Metadata)
	for _, p := range s.AuthenticationProfiles {
		add(p.Metadata)
	}
	return out, nil
}

var codeName = regexp.MustCompile("`([^`]+)`")

// documentedFields returns the fields named in the first column of the tables
// whose first heading is "field", with the line where each is documented, and
// a problem for each field documented twice.
func documentedFields(md string) (map[string]int, []string) {
	lines := strings.Split(md, "\n")
	code := fenced(lines)
	out := map[string]int{}
	var dups []string
	inTable := false
	for i, l := range lines {
		if code[i] || !strings.HasPrefix(strings.TrimSpace(l), "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")
		first := strings.TrimSpace(cells[0])
		switch {
		case !inTable:
			inTable = first == "field" // a table's heading row
			continue
		case strings.Trim(first, "-: ") == "":
			continue // the row under the heading
		}
		for _, m := range codeName.FindAllStringSubmatch(first, -1) {
			name := m[1]
			if at, ok := out[name]; ok {
				dups = append(dups, fmt.Sprintf("line %d documents %q again (first at line %d)", i+1, name, at))
				continue
			}
			out[name] = i + 1
		}
	}
	return out, dups
}

// compareFields returns a problem for each schema field that is not
// documented, and for each documented field that the schema does not have.
func compareFields(inSchema map[string]bool, documented map[string]int) []string {
	var missing, extra []string
	for _, f := range sortedNames(inSchema) {
		if _, ok := documented[f]; !ok {
			missing = append(missing, fmt.Sprintf("%s has field %q, which %s does not document", schemaFile, f, metadataDocs))
		}
	}
	for f, line := range documented {
		if !inSchema[f] && !notInSchema[f] {
			extra = append(extra, fmt.Sprintf("%s:%d documents field %q, which %s does not have", metadataDocs, line, f, schemaFile))
		}
	}
	sort.Strings(extra)
	return append(missing, extra...)
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestDocumentedFields(t *testing.T) {
	md := strings.Join([]string{
		"| field | default | meaning |",
		"|---|---|---|",
		"| `natsURL` | **required** | `nats://host:4222` |",
		"| `user`, `password` | | set both |",
		"| `domain` / `apiPrefix` | | only one |",
		"",
		"| header | value |",
		"|---|---|",
		"| `Dead-Letter-Subject` | the subject |",
		"",
		"| field | default | meaning |",
		"|---|---|---|",
		"| `user` | | again |",
	}, "\n")
	got, dups := documentedFields(md)
	want := map[string]int{"natsURL": 3, "user": 4, "password": 4, "domain": 5, "apiPrefix": 5}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("documentedFields = %v, want %v", got, want)
	}
	if len(dups) != 1 || !strings.Contains(dups[0], `"user"`) {
		t.Errorf("dups = %q, want one for user", dups)
	}
}

func TestCompareFields(t *testing.T) {
	schema := map[string]bool{"natsURL": true, "token": true}
	for _, c := range []struct {
		documented map[string]int
		want       int
	}{
		{map[string]int{"natsURL": 1, "token": 2}, 0},
		{map[string]int{"natsURL": 1, "token": 2, "consumerID": 3}, 0},
		{map[string]int{"natsURL": 1}, 1},                        // token missing
		{map[string]int{"natsURL": 1, "token": 2, "tokn": 3}, 1}, // not in the schema
		{map[string]int{"natsURL": 1, "tokn": 3}, 2},             // both
	} {
		if got := compareFields(schema, c.documented); len(got) != c.want {
			t.Errorf("compareFields(%v) = %q, want %d problems", c.documented, got, c.want)
		}
	}
}
