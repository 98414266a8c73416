package docs

import (
	"reflect"
	"strings"
	"testing"
)

// These tests hold the link checker to what GitHub renders, so that
// TestLinksResolve can neither miss a broken link nor refuse a good one.

func TestSlug(t *testing.T) {
	for h, want := range map[string]string{
		"Why use it instead of the built-in `pubsub.jetstream`": "why-use-it-instead-of-the-built-in-pubsubjetstream",
		"Probes, resources, security, shutdown":                 "probes-resources-security-shutdown",
		"Checked by `make test`":                                "checked-by-make-test",
		"Self-hosted with `dapr run`":                           "self-hosted-with-dapr-run",
		"The `tls_ca_file` field":                               "the-tls_ca_file-field",
		"See [Metadata](docs/metadata.md) first":                "see-metadata-first",
	} {
		if got := slug(h); got != want {
			t.Errorf("slug(%q) = %q, want %q", h, got, want)
		}
	}
}

func TestAnchors(t *testing.T) {
	md := strings.Join([]string{
		"# Title",
		"## Usage",
		"```sh",
		"# a shell comment, not a heading",
		"```",
		"### Usage",
		`<a id="kept"></a>`,
	}, "\n")
	got := anchors(md)
	want := map[string]bool{"title": true, "usage": true, "usage-1": true, "kept": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("anchors = %v, want %v", got, want)
	}
}

func TestLinksFound(t *testing.T) {
	md := strings.Join([]string{
		"See [the docs](docs/a.md#part) and [`Dockerfile`](Dockerfile \"title\").",
		"Not in code: `[x](nowhere.md)`.",
		"```",
		"[y](nowhere-either.md)",
		"```",
		"[ref]: CONTRIBUTING.md",
		"![chart](docs/chart.svg)",
	}, "\n")
	var got []string
	for _, l := range links(md) {
		got = append(got, l.target)
	}
	want := []string{"docs/a.md#part", "Dockerfile", "CONTRIBUTING.md", "docs/chart.svg"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("links = %q, want %q", got, want)
	}
}

func TestCheckLink(t *testing.T) {
	md := "# Top\n## Two words\n"
	for _, c := range []struct {
		target string
		broken bool
	}{
		{"#two-words", false},
		{"#two_words", true},
		{"#missing", true},
		{"https://example.com/x#y", false},
		{"Makefile", false},
		{"docs/", false},
		{"docs/publish-path.md#figures", false},
		{"docs/publish-path.md#no-such-heading", true},
		{"no-such-file.md", true},
		{"../outside", true},
		{"/Makefile", true},
	} {
		p := checkLink("README.md", md, c.target)
		if (p != "") != c.broken {
			t.Errorf("checkLink(%q) = %q, want broken=%v", c.target, p, c.broken)
		}
	}
}
