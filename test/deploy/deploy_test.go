package deploy

import (
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	componentsapi "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	injectorconsts "github.com/dapr/dapr/pkg/injector/consts"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

// Files under deploy/ that are not Kubernetes manifests, or are not applied
// by any kustomization on purpose.
var (
	natsValues = map[string]bool{ // values file -> the chart forms a cluster
		"deploy/nats/values.yaml":     true,
		"deploy/nats/values-dev.yaml": false,
	}
	// Secrets are applied by hand, so that `kubectl apply -k` never puts a
	// placeholder back over a real token.
	appSecrets  = "deploy/secret.yaml"
	natsSecrets = "deploy/nats/secret.yaml"
	// Which NATS install each kustomization is meant for.
	kustomizationNATS = map[string]string{
		"deploy":          "deploy/nats/values.yaml",
		"deploy/injected": "deploy/nats/values.yaml",
		"deploy/manual":   "deploy/nats/values.yaml",
		"deploy/dev":      "deploy/nats/values-dev.yaml",
	}
)

func isNATSValues(f string) bool {
	_, ok := natsValues[f]
	return ok
}

func reportAll(t *testing.T, p problems) {
	t.Helper()
	for _, err := range p {
		t.Error(err)
	}
}

// baseEnv gathers what every check needs: metadata.yaml, main.go's flags,
// the Dockerfile's entrypoint and user, the Makefile's image, the Secrets.
func baseEnv(t *testing.T) env {
	t.Helper()
	flags, envs := binaryFlags(t)
	gomod, err := goModVersion()
	if err != nil {
		t.Fatal(err)
	}
	entry, uid, p := checkDockerfile(string(readFile(t, "Dockerfile")), gomod)
	if len(p) > 0 || entry == "" {
		reportAll(t, p)
		t.Fatal("the Dockerfile must be valid before the manifests can be checked against it")
	}
	image := makefileVars(t)["IMAGE"]
	if image == "" {
		t.Fatal("Makefile: no IMAGE ?= ...")
	}
	secrets, err := secretsIn(appSecrets, "")
	if err != nil {
		t.Fatal(err)
	}
	return env{
		Schema: metadataSchema(t), Flags: flags, Envs: envs, Secrets: secrets,
		Image: imageRepo(image), Entrypoint: entry, ImageUID: uid,
	}
}

// natsEnv adds the NATS install of a values file to an env.
func natsEnv(t *testing.T, e env, values string) env {
	t.Helper()
	nsecrets, err := secretsIn(natsSecrets, "nats")
	if err != nil {
		t.Fatal(err)
	}
	inst, p := checkNATSValues(values, readFile(t, values), natsValues[values], nsecrets)
	reportAll(t, p)
	e.NATSHost, e.NATSServers = inst.Host, inst.Servers
	return e
}

// checkBundle checks what one kustomization deploys.
func checkBundle(r *rendered, e env) problems {
	var p problems
	var comps []*componentsapi.Component
	var deps []*appsv1.Deployment
	for _, o := range r.Objects {
		switch v := o.Obj.(type) {
		case *componentsapi.Component:
			comps = append(comps, v)
		case *appsv1.Deployment:
			deps = append(deps, v)
		case *corev1.Secret:
			p.add("%s: Secrets are applied by hand (%s), not by a kustomization", o, appSecrets)
		}
	}
	if len(comps) == 0 || len(deps) == 0 {
		p.add("%s: want at least one Component and one Deployment", r.Dir)
	}
	for _, c := range comps {
		p = append(p, checkComponent(c, e, true)...)
	}
	for _, d := range deps {
		p = append(p, checkDeployment(d, comps, e)...)
	}
	return p
}

func TestDockerfile(t *testing.T) {
	gomod, err := goModVersion()
	if err != nil {
		t.Fatal(err)
	}
	entry, uid, p := checkDockerfile(string(readFile(t, "Dockerfile")), gomod)
	reportAll(t, p)
	if entry != "/dapr-nats-jetstream" || uid != daprdUID {
		t.Errorf("ENTRYPOINT %s, uid %d; the manifests expect /dapr-nats-jetstream and %d, daprd's own uid", entry, uid, daprdUID)
	}
}

func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	var patterns []string
	for _, l := range strings.Split(string(readFile(t, ".dockerignore")), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	inputs, err := buildInputs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(inputs, "main.go") || len(inputs) < 10 {
		t.Fatalf("go list found too few build inputs: %v", inputs)
	}
	for _, f := range inputs {
		if dockerignored(f, patterns) {
			t.Errorf(".dockerignore excludes %s, which `go build .` needs", f)
		}
	}
	for _, f := range []string{".git/HEAD", "bin/dapr-nats-jetstream", ".cache/x", "deploy/secret.yaml", "pluggable/server_test.go", "metadata/testdata/fuzz/x"} {
		if !dockerignored(f, patterns) {
			t.Errorf(".dockerignore should exclude %s from the build context", f)
		}
	}
}

func TestMakefile(t *testing.T) {
	mk := string(readFile(t, "Makefile"))
	if !regexp.MustCompile(`(?m)^image:\s*\n\tdocker build -t \$\(IMAGE\) \.\s*$`).MatchString(mk) {
		t.Error("Makefile: want `image:` running `docker build -t $(IMAGE) .`")
	}
	lint := regexp.MustCompile(`(?ms)^lint:([^\n]*)\n(.*?)\n\n`).FindStringSubmatch(mk)
	if lint == nil || !strings.Contains(lint[1], "fmt-check") || !strings.Contains(lint[2], "$(STATICCHECK)") || !strings.Contains(lint[2], "go mod tidy -diff") {
		t.Error("Makefile: want `lint:` on fmt-check, with staticcheck and go mod tidy -diff")
	}
	if fmt := regexp.MustCompile(`(?ms)^fmt-check:[^\n]*\n(.*?)\n\n`).FindStringSubmatch(mk); fmt == nil || !strings.Contains(fmt[1], "gofmt -l") {
		t.Error("Makefile: want `fmt-check:` running gofmt -l")
	}
	if !regexp.MustCompile(`(?m)^fuzz:`).MatchString(mk) || !strings.Contains(mk, "-fuzztime $(FUZZTIME)") {
		t.Error("Makefile: want `fuzz:` running every fuzzer for $(FUZZTIME)")
	}
	if test := regexp.MustCompile(`(?m)^test:(.*)$`).FindStringSubmatch(mk); test == nil || strings.Contains(test[1], "lint") {
		t.Error("Makefile: `test` must not depend on `lint`")
	}
}

// TestManifestsDecodeStrictly decodes every YAML file under deploy/ as the
// API server would, and checks that each is either applied by a
// kustomization or is one of the files meant to be used on their own.
func TestManifestsDecodeStrictly(t *testing.T) {
	deployed := map[string]bool{}
	for dir := range kustomizationNATS {
		r, err := render(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range r.Files {
			deployed[filepath.ToSlash(f)] = true
		}
	}
	for _, f := range yamlFiles(t, "deploy") {
		f = filepath.ToSlash(f)
		switch {
		case filepath.Base(f) == "kustomization.yaml":
			if _, ok := kustomizationNATS[filepath.Dir(f)]; !ok {
				t.Errorf("%s: a kustomization this test does not know; add it to kustomizationNATS", f)
			}
		case isNATSValues(f):
			// Helm values: TestNATSValues.
		case f == appSecrets || f == natsSecrets:
			if _, err := secretsIn(f, ""); err != nil {
				t.Error(err)
			}
		default:
			if _, err := loadManifests(f); err != nil {
				t.Error(err)
			}
			if !deployed[f] {
				t.Errorf("%s is applied by no kustomization", f)
			}
		}
	}
}

func TestSecretsArePlaceholders(t *testing.T) {
	for _, f := range []string{appSecrets, natsSecrets} {
		objs, err := loadManifests(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			s := o.Obj.(*corev1.Secret)
			if len(s.Data) > 0 {
				t.Errorf("%s: use stringData with a placeholder, not data", o)
			}
			for k, v := range s.StringData {
				if !strings.HasPrefix(v, "REPLACE-WITH-") {
					t.Errorf("%s: key %s holds something other than a REPLACE-WITH-... placeholder", o, k)
				}
			}
		}
	}
	// The NATS servers and the component must be told about the same Secret
	// names and keys that the docs tell users to create.
	const guide = "docs/kubernetes.md"
	steps := string(readFile(t, guide))
	for _, want := range []string{"create secret generic nats-jetstream-auth --from-literal=token=", "create secret generic nats-auth --from-literal=token="} {
		if !strings.Contains(steps, want) {
			t.Errorf("%s does not show `kubectl ... %s`", guide, want)
		}
	}
}

func TestNATSValues(t *testing.T) {
	nsecrets, err := secretsIn(natsSecrets, "nats")
	if err != nil {
		t.Fatal(err)
	}
	for f, cluster := range natsValues {
		inst, p := checkNATSValues(f, readFile(t, f), cluster, nsecrets)
		reportAll(t, p)
		if cluster && inst.Servers != 3 {
			t.Errorf("%s: %d servers, want 3", f, inst.Servers)
		}
		if !cluster && inst.Servers != 1 {
			t.Errorf("%s: %d servers, want 1", f, inst.Servers)
		}
		if inst.Host != "nats.nats.svc.cluster.local" {
			t.Errorf("%s: the client Service is %s; docs/kubernetes.md and the Components use nats.nats.svc.cluster.local", f, inst.Host)
		}
	}
}

// TestKustomizations renders each kustomization and checks what it deploys:
// its Components, and its Deployments after Dapr's injector has run.
func TestKustomizations(t *testing.T) {
	base := baseEnv(t)
	for dir, values := range kustomizationNATS {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			e := natsEnv(t, base, values)
			r, err := render(dir)
			if err != nil {
				t.Fatal(err)
			}
			reportAll(t, checkBundle(r, e))
		})
	}
}

// TestInjectedPodShape pins down what Dapr 1.18's injector does with the two
// Deployments, so that a Dapr upgrade that changes it is noticed here.
func TestInjectedPodShape(t *testing.T) {
	for _, dir := range []string{"deploy/injected", "deploy/manual"} {
		r, err := render(dir)
		if err != nil {
			t.Fatal(err)
		}
		var comps []*componentsapi.Component
		var dep *appsv1.Deployment
		for _, o := range r.Objects {
			switch v := o.Obj.(type) {
			case *componentsapi.Component:
				comps = append(comps, v)
			case *appsv1.Deployment:
				dep = v
			}
		}
		pod, err := inject(dep, comps)
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, c := range pod.Spec.Containers {
			order = append(order, c.Name)
		}
		want := map[string][]string{
			// The injector appends daprd, then the injected component.
			"deploy/injected": {"app", "daprd", "nats-jetstream"},
			// Declared containers stay first, so postStart can hold daprd back.
			"deploy/manual": {"nats-jetstream", "app", "daprd"},
		}[dir]
		if !slices.Equal(order, want) {
			t.Errorf("%s: containers %v, want %v", dir, order, want)
		}
		var vol *corev1.Volume
		for i := range pod.Spec.Volumes {
			if pod.Spec.Volumes[i].Name == injectorconsts.ComponentsUDSVolumeName {
				vol = &pod.Spec.Volumes[i]
			}
		}
		if vol == nil || vol.EmptyDir == nil {
			t.Errorf("%s: no emptyDir volume %s after injection", dir, injectorconsts.ComponentsUDSVolumeName)
		}
		for _, c := range pod.Spec.Containers {
			if c.Name == "app" {
				continue
			}
			m := mountAt(&c, pluggable.DefaultSocketFolder)
			if m == nil || m.Name != injectorconsts.ComponentsUDSVolumeName {
				t.Errorf("%s: container %s has no %s mounted at %s", dir, c.Name, injectorconsts.ComponentsUDSVolumeName, pluggable.DefaultSocketFolder)
			}
		}
	}
}

// TestRootComponent checks component.yaml, the Component for `dapr run` and
// `make run`, which talk to the binary with its default socket name.
func TestRootComponent(t *testing.T) {
	objs, err := loadManifests("component.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := env{Schema: metadataSchema(t)}
	for _, o := range objs {
		c, ok := o.Obj.(*componentsapi.Component)
		if !ok {
			t.Fatalf("%s is not a Component", o)
		}
		reportAll(t, checkComponent(c, e, false))
		if c.Spec.Type != "pubsub."+pluggable.DefaultSocketName {
			t.Errorf("%s: type %s, but the binary's default socket %s.sock makes pubsub.%s", o, c.Spec.Type, pluggable.DefaultSocketName, pluggable.DefaultSocketName)
		}
	}
}

func TestDefaultsAgreeWithDapr(t *testing.T) {
	folders := []string{pluggable.DefaultSocketFolder, daprdSocketFolder, injectorconsts.ComponentsUDSDefaultFolder}
	if len(slices.Compact(folders)) != 1 {
		t.Errorf("the binary's default socket folder %s, daprd's %s and the injector's %s differ",
			pluggable.DefaultSocketFolder, daprdSocketFolder, injectorconsts.ComponentsUDSDefaultFolder)
	}
}
