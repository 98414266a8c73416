// Package deploy checks the shipping files that no test here can run: the
// Dockerfile, the Kubernetes manifests and kustomizations under deploy/, the
// NATS Helm values, and the Component YAML at the root of the repository.
//
// Manifests are decoded the way the API server does (sigs.k8s.io/json strict:
// unknown or duplicate fields and wrong case are errors) into k8s.io/api types
// and Dapr's Component type. Deployments are then run through Dapr's own
// sidecar injector (github.com/dapr/dapr/pkg/injector/patcher, the code of
// the version in go.mod) together with the Components deployed next to them,
// and the resulting pod is checked: that daprd and the component container
// share the socket folder, that the socket name gives the Component's type,
// and so on.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	componentsapi "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	jsonpatch "github.com/evanphx/json-patch/v5"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// root is the repository root, relative to this package's directory.
const root = "../.."

// repoPath joins a path relative to the repository root; an absolute path
// (a test's temporary directory) is kept as it is.
func repoPath(parts ...string) string {
	p := filepath.Join(parts...)
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, p)
}

func readFile(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// object is one decoded Kubernetes document.
type object struct {
	File string // relative to the repository root
	Doc  int    // index of the document in the file
	Kind string
	// JSON is the document as JSON, what kustomize patches operate on.
	JSON []byte
	// Obj is the typed object: *appsv1.Deployment, *corev1.Secret, ...
	Obj any
}

func (o *object) String() string { return fmt.Sprintf("%s (document %d, %s)", o.File, o.Doc, o.Kind) }

func (o *object) name() string {
	switch v := o.Obj.(type) {
	case *appsv1.Deployment:
		return v.Name
	case *appsv1.StatefulSet:
		return v.Name
	case *corev1.Secret:
		return v.Name
	case *corev1.Service:
		return v.Name
	case *corev1.ConfigMap:
		return v.Name
	case *componentsapi.Component:
		return v.Name
	}
	return ""
}

// kinds are the types a manifest under deploy/ may have, by apiVersion/kind.
// A new kind must be added here, so that it is decoded strictly too.
var kinds = map[string]func() any{
	"v1/Secret":                  func() any { return &corev1.Secret{} },
	"v1/Service":                 func() any { return &corev1.Service{} },
	"v1/ConfigMap":               func() any { return &corev1.ConfigMap{} },
	"apps/v1/Deployment":         func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":        func() any { return &appsv1.StatefulSet{} },
	"dapr.io/v1alpha1/Component": func() any { return &componentsapi.Component{} },
}

// strictJSON decodes JSON as the API server does: case-sensitive field
// names, unknown and duplicate fields rejected.
func strictJSON(data []byte, into any) error {
	strict, err := sigsjson.UnmarshalStrict(data, into)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// strictYAML converts one YAML document to JSON (duplicate keys are errors)
// and decodes it strictly.
func strictYAML(doc []byte, into any) ([]byte, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	return js, strictJSON(js, into)
}

// splitYAML returns the non-empty documents of a multi-document YAML file.
func splitYAML(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var probe map[string]any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			return nil, err
		}
		if len(probe) > 0 {
			docs = append(docs, doc)
		}
	}
}

// decodeManifest decodes one document into the type its apiVersion and kind
// name.
func decodeManifest(file string, idx int, doc []byte) (*object, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, fmt.Errorf("%s document %d: %w", file, idx, err)
	}
	gvk := tm.APIVersion + "/" + tm.Kind
	newObj, ok := kinds[gvk]
	if !ok {
		return nil, fmt.Errorf("%s document %d: %s is not a kind this test knows; add it to kinds", file, idx, gvk)
	}
	obj := newObj()
	js, err := strictYAML(doc, obj)
	if err != nil {
		return nil, fmt.Errorf("%s document %d (%s): %w", file, idx, tm.Kind, err)
	}
	return &object{File: file, Doc: idx, Kind: tm.Kind, JSON: js, Obj: obj}, nil
}

// loadManifests decodes every document of a YAML file (relative to the root).
func loadManifests(rel string) ([]*object, error) {
	data, err := os.ReadFile(repoPath(rel))
	if err != nil {
		return nil, err
	}
	docs, err := splitYAML(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: no documents", rel)
	}
	var out []*object
	for i, doc := range docs {
		o, err := decodeManifest(rel, i, doc)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, nil
}

// kustomization is the subset of kustomize's Kustomization that deploy/
// uses. It is decoded strictly: a field not listed here makes the test fail,
// so that whoever adds one also teaches render about it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources,omitempty"`
	Patches    []struct {
		Patch  string `json:"patch"`
		Target struct {
			Group   string `json:"group,omitempty"`
			Version string `json:"version,omitempty"`
			Kind    string `json:"kind"`
			Name    string `json:"name"`
		} `json:"target"`
	} `json:"patches,omitempty"`
}

// rendered is the output of a kustomization, and the files it read.
type rendered struct {
	Dir     string
	Objects []*object
	Files   []string
}

// render builds a kustomization directory (relative to the root) the way
// `kubectl apply -k` does for the features in kustomization: resources
// (files, or directories with their own kustomization) and inline JSON 6902
// patches with a target.
func render(dir string) (*rendered, error) {
	kfile := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(repoPath(kfile))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if _, err := strictYAML(data, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", kfile, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: apiVersion/kind %s/%s, want kustomize.config.k8s.io/v1beta1/Kustomization", kfile, k.APIVersion, k.Kind)
	}
	out := &rendered{Dir: dir, Files: []string{kfile}}
	for _, res := range k.Resources {
		p := filepath.Join(dir, res)
		if filepath.IsAbs(res) {
			p = res
		}
		fi, err := os.Stat(repoPath(p))
		if err != nil {
			return nil, fmt.Errorf("%s: resource %q: %w", kfile, res, err)
		}
		if fi.IsDir() {
			sub, err := render(p)
			if err != nil {
				return nil, err
			}
			out.Objects = append(out.Objects, sub.Objects...)
			out.Files = append(out.Files, sub.Files...)
			continue
		}
		// kustomize's default load restrictor: files only from inside the
		// kustomization's own directory.
		if rel, err := filepath.Rel(dir, p); err != nil || strings.HasPrefix(rel, "..") {
			return nil, fmt.Errorf("%s: resource %q is a file outside %s; kustomize refuses it (use a directory with a kustomization)", kfile, res, dir)
		}
		objs, err := loadManifests(p)
		if err != nil {
			return nil, err
		}
		out.Objects = append(out.Objects, objs...)
		out.Files = append(out.Files, p)
	}
	seen := map[string]string{}
	for _, o := range out.Objects {
		id := o.Kind + "/" + o.name()
		if prev, dup := seen[id]; dup {
			return nil, fmt.Errorf("%s: %s appears twice (%s and %s)", kfile, id, prev, o)
		}
		seen[id] = o.String()
	}
	for i, p := range k.Patches {
		ops, err := yaml.YAMLToJSONStrict([]byte(p.Patch))
		if err != nil {
			return nil, fmt.Errorf("%s: patch %d: %w", kfile, i, err)
		}
		if !bytes.HasPrefix(bytes.TrimSpace(ops), []byte("[")) {
			return nil, fmt.Errorf("%s: patch %d is not a JSON 6902 list of operations; only those are supported here", kfile, i)
		}
		patch, err := jsonpatch.DecodePatch(ops)
		if err != nil {
			return nil, fmt.Errorf("%s: patch %d: %w", kfile, i, err)
		}
		matched := 0
		for j, o := range out.Objects {
			if o.Kind != p.Target.Kind || o.name() != p.Target.Name {
				continue
			}
			matched++
			js, err := patch.Apply(o.JSON)
			if err != nil {
				return nil, fmt.Errorf("%s: patch %d on %s: %w", kfile, i, o, err)
			}
			// JSON is YAML, so the patched document decodes like a file.
			patched, err := decodeManifest(o.File+" patched by "+kfile, o.Doc, js)
			if err != nil {
				return nil, err
			}
			out.Objects[j] = patched
		}
		if matched == 0 {
			return nil, fmt.Errorf("%s: patch %d matches no resource (%s %s)", kfile, i, p.Target.Kind, p.Target.Name)
		}
	}
	return out, nil
}

// yamlFiles lists the .yaml and .yml files under a directory, relative to the
// root.
func yamlFiles(t testing.TB, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(repoPath(dir), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// ---- the binary's command line ----

// binaryFlags reads main.go and returns the flags func main defines (fs.String,
// fs.StringVar, fs.Duration, ...) and the environment variables it reads
// through env("NAME", ...), so that the manifests are checked against the
// binary as it is and not against a copy of its flags.
func binaryFlags(t testing.TB) (flags, envs map[string]bool) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, repoPath("main.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// func main and the socketFlags it shares with the healthcheck: the
	// server's flags, not those of a subcommand.
	var fns []ast.Node
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && (fd.Name.Name == "main" || fd.Name.Name == "socketFlags") && fd.Recv == nil {
			fns = append(fns, fd)
		}
	}
	if len(fns) == 0 {
		t.Fatal("main.go has no func main")
	}
	flags, envs = map[string]bool{}, map[string]bool{}
	for _, fn := range fns {
		inspectFlags(fn, flags, envs)
	}
	if len(flags) == 0 || len(envs) == 0 {
		t.Fatal("found no flags or environment variables in main.go; has its structure changed?")
	}
	return flags, envs
}

func inspectFlags(root ast.Node, flags, envs map[string]bool) {
	ast.Inspect(root, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		lit := func(i int) (string, bool) {
			if i >= len(call.Args) {
				return "", false
			}
			bl, ok := call.Args[i].(*ast.BasicLit)
			if !ok || bl.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(bl.Value)
			return s, err == nil
		}
		switch fn := call.Fun.(type) {
		case *ast.SelectorExpr:
			if id, ok := fn.X.(*ast.Ident); ok && id.Name == "fs" {
				// fs.String("name", ...) or fs.StringVar(&v, "name", ...)
				i := 0
				if strings.HasSuffix(fn.Sel.Name, "Var") {
					i = 1
				}
				if s, ok := lit(i); ok {
					flags[s] = true
				}
			}
		case *ast.Ident:
			if fn.Name == "env" {
				if s, ok := lit(0); ok {
					envs[s] = true
				}
			}
		}
		return true
	})
}

// parseArgs parses Go flag-package arguments: -name=value, --name=value and
// -name value. Every flag of the binary takes a value.
func parseArgs(args []string, known map[string]bool) (map[string]string, error) {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			return nil, fmt.Errorf("argument %q is not a flag; the binary takes only flags", a)
		}
		name := strings.TrimLeft(a, "-")
		value, hasValue := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = k, v, true
		}
		if !known[name] {
			return nil, fmt.Errorf("flag -%s is not defined by the binary (it would exit with status 2)", name)
		}
		if !hasValue {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("flag -%s has no value", name)
			}
			i++
			value = args[i]
		}
		out[name] = value
	}
	return out, nil
}

// ---- the Dockerfile ----

type dockerStage struct {
	From, Name string
	Instrs     []dockerInstr
}

type dockerInstr struct {
	Cmd, Args string
	Line      int
}

// parseDockerfile splits a Dockerfile into stages of instructions, joining
// continuation lines and dropping comments.
func parseDockerfile(data string) ([]dockerStage, []dockerInstr, error) {
	var stages []dockerStage
	var global []dockerInstr
	lines := strings.Split(data, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		start := i + 1
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if strings.HasPrefix(next, "#") {
				continue
			}
			line = strings.TrimSuffix(line, `\`) + " " + next
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := dockerInstr{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			var st dockerStage
			for j := 0; j < len(f); j++ {
				switch {
				case strings.HasPrefix(f[j], "--"):
				case strings.EqualFold(f[j], "AS") && j+1 < len(f):
					st.Name = f[j+1]
					j++
				default:
					st.From = f[j]
				}
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			global = append(global, in)
			continue
		}
		stages[len(stages)-1].Instrs = append(stages[len(stages)-1].Instrs, in)
	}
	if len(stages) == 0 {
		return nil, nil, errors.New("no FROM")
	}
	return stages, global, nil
}

// ---- the Makefile ----

var makeVar = regexp.MustCompile(`(?m)^([A-Z_]+)\s*\?=\s*(.*?)\s*$`)

func makefileVars(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, m := range makeVar.FindAllStringSubmatch(string(readFile(t, "Makefile")), -1) {
		out[m[1]] = m[2]
	}
	return out
}

// ---- metadata/metadata.yaml ----

type metadataField struct {
	Name      string `json:"name"`
	Sensitive bool   `json:"sensitive"`
}

// metadataSchema returns every field metadata/metadata.yaml declares, in its
// top-level metadata and in every authentication profile.
func metadataSchema(t testing.TB) map[string]metadataField {
	t.Helper()
	var schema struct {
		Type                   string          `json:"type"`
		Name                   string          `json:"name"`
		Metadata               []metadataField `json:"metadata"`
		AuthenticationProfiles []struct {
			Metadata []metadataField `json:"metadata"`
		} `json:"authenticationProfiles"`
	}
	if err := yaml.Unmarshal(readFile(t, "metadata/metadata.yaml"), &schema); err != nil {
		t.Fatal(err)
	}
	fields := map[string]metadataField{}
	add := func(f metadataField) {
		prev := fields[f.Name]
		f.Sensitive = f.Sensitive || prev.Sensitive
		fields[f.Name] = f
	}
	for _, f := range schema.Metadata {
		add(f)
	}
	for _, p := range schema.AuthenticationProfiles {
		for _, f := range p.Metadata {
			add(f)
		}
	}
	if len(fields) < 20 || fields["natsURL"].Name == "" || !fields["token"].Sensitive {
		t.Fatalf("metadata/metadata.yaml: expected natsURL and a sensitive token among its fields, got %d fields", len(fields))
	}
	return fields
}
