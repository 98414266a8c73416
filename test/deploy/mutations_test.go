package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dapr/dapr/pkg/apis/common"
	componentsapi "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The tests in this file break the shipped files on purpose, one mistake at
// a time, and check that the checks name it. Without them a check that never
// fires would look the same as a deployment without mistakes.

func expectProblem(t *testing.T, p problems, want string) {
	t.Helper()
	for _, err := range p {
		if strings.Contains(err.Error(), want) {
			return
		}
	}
	if len(p) == 0 {
		t.Errorf("no problem found; want one containing %q", want)
		return
	}
	t.Errorf("want a problem containing %q, got:", want)
	for _, err := range p {
		t.Logf("  %v", err)
	}
}

// bundle renders a kustomization afresh, so that each mutation starts from
// the shipped files.
func bundle(t *testing.T, dir string) ([]*componentsapi.Component, *appsv1.Deployment) {
	t.Helper()
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
	if len(comps) == 0 || dep == nil {
		t.Fatalf("%s: no Component or Deployment", dir)
	}
	return comps, dep
}

func setMeta(c *componentsapi.Component, name, value string) {
	for i := range c.Spec.Metadata {
		if c.Spec.Metadata[i].Name == name {
			c.Spec.Metadata[i].SecretKeyRef = common.SecretKeyRef{}
			c.Spec.Metadata[i].SetValue([]byte(`"` + value + `"`))
			return
		}
	}
	nv := common.NameValuePair{Name: name}
	nv.SetValue([]byte(`"` + value + `"`))
	c.Spec.Metadata = append(c.Spec.Metadata, nv)
}

func container(t *testing.T, d *appsv1.Deployment, name string) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == name {
			return &d.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

func TestComponentMistakesAreFound(t *testing.T) {
	base := natsEnv(t, baseEnv(t), "deploy/nats/values.yaml")
	cases := []struct {
		name   string
		mutate func(*componentsapi.Component)
		want   string
	}{
		{"misspelt field", func(c *componentsapi.Component) { setMeta(c, "streamReplica", "3") }, `metadata "streamReplica" is not a field`},
		{"wrong case", func(c *componentsapi.Component) { setMeta(c, "natsUrl", "nats://nats.nats.svc.cluster.local:4222") }, `is set twice`},
		{"inline token", func(c *componentsapi.Component) { setMeta(c, "token", "s3cret") }, `"token" is sensitive`},
		{"no secret store", func(c *componentsapi.Component) { c.Auth.SecretStore = "" }, "auth.secretStore"},
		{"unknown Secret", func(c *componentsapi.Component) { c.Spec.Metadata[1].SecretKeyRef.Name = "nats-token" }, `Secret "nats-token" is not among the shipped Secrets`},
		{"unknown key", func(c *componentsapi.Component) { c.Spec.Metadata[1].SecretKeyRef.Key = "password" }, `has no key "password"`},
		{"too many stream replicas", func(c *componentsapi.Component) { setMeta(c, "streamReplicas", "5") }, "streamReplicas 5 exceeds the 3 NATS server(s)"},
		{"consumer above stream", func(c *componentsapi.Component) { setMeta(c, "streamReplicas", "1") }, "consumer replicas 3 exceeds streamReplicas 1"},
		{"bad duration", func(c *componentsapi.Component) { setMeta(c, "ackWait", "soon") }, "ackWait"},
		{"deliver contradiction", func(c *componentsapi.Component) {
			setMeta(c, "deliverPolicy", "new")
			setMeta(c, "startSequence", "5")
		}, "refuse this metadata at Init"},
		{"wrong NATS host", func(c *componentsapi.Component) { setMeta(c, "natsURL", "nats://nats.default.svc.cluster.local:4222") }, "does not point at the NATS Service"},
		{"bad container JSON", func(c *componentsapi.Component) {
			c.Annotations["dapr.io/component-container"] = strings.Replace(c.Annotations["dapr.io/component-container"], `"args"`, `"arguments"`, 1)
		}, "is not a valid Container"},
		{"wrong type prefix", func(c *componentsapi.Component) { c.Spec.Type = "state.nats-jetstream" }, "is not a pub/sub type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			comps, _ := bundle(t, "deploy/injected")
			if p := checkComponent(comps[0], base, true); len(p) > 0 {
				t.Fatalf("the shipped Component already fails: %v", p)
			}
			tc.mutate(comps[0])
			expectProblem(t, checkComponent(comps[0], base, true), tc.want)
		})
	}
}

func TestPodMistakesAreFound(t *testing.T) {
	base := natsEnv(t, baseEnv(t), "deploy/nats/values.yaml")
	type mut = func(t *testing.T, c *componentsapi.Component, d *appsv1.Deployment)
	// manualCtr edits the component container of deploy/manual's Deployment.
	manualCtr := func(f func(*corev1.Container)) mut {
		return func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			f(container(t, d, "nats-jetstream"))
		}
	}
	cases := []struct {
		name, dir string
		mutate    mut
		want      string // empty: the mutation is a correct variant
	}{
		{"type does not match socket", "deploy/injected", func(t *testing.T, c *componentsapi.Component, _ *appsv1.Deployment) {
			c.Spec.Type = "pubsub.jetstream-nats"
		}, "has type pubsub.jetstream-nats, but the component containers serve [pubsub.nats-jetstream]"},
		{"socket name arg", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Args = append(c.Args, "-socket-name=natsjs") }),
			"has type pubsub.nats-jetstream, but the component containers serve [pubsub.natsjs]"},
		{"socket name env", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "JETSTREAM_SOCKET_NAME", Value: "natsjs"})
		}), "serve [pubsub.natsjs]"},
		{"socket name env with probes following", "deploy/manual", func(t *testing.T, c *componentsapi.Component, d *appsv1.Deployment) {
			container(t, d, "nats-jetstream").Env = append(container(t, d, "nats-jetstream").Env, corev1.EnvVar{Name: "JETSTREAM_SOCKET_NAME", Value: "natsjs"})
			c.Spec.Type = "pubsub.natsjs"
		}, ""},
		{"probe on another socket", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.StartupProbe.Exec.Command = append(c.StartupProbe.Exec.Command, "-socket-name=other")
		}), "startupProbe checks /tmp/dapr-components-sockets/other.sock but the server listens on /tmp/dapr-components-sockets/nats-jetstream.sock"},
		{"socket name arg without probes", "deploy/manual", func(t *testing.T, c *componentsapi.Component, d *appsv1.Deployment) {
			container(t, d, "nats-jetstream").Args = append(container(t, d, "nats-jetstream").Args, "-socket-name=natsjs")
			c.Spec.Type = "pubsub.natsjs"
		}, "startupProbe checks /tmp/dapr-components-sockets/nats-jetstream.sock but the server listens on /tmp/dapr-components-sockets/natsjs.sock"},
		{"unknown flag", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Args = []string{"-drain=20s"} }), "flag -drain is not defined by the binary"},
		{"sockets-folder annotation alone", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["dapr.io/pluggable-components-sockets-folder"] = "/var/run/components"
		}, "daprd looks for sockets in /tmp/dapr-components-sockets but nothing is mounted there"},
		{"sockets folder moved everywhere", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["dapr.io/pluggable-components-sockets-folder"] = "/var/run/components"
			d.Spec.Template.Annotations["dapr.io/env"] = "DAPR_COMPONENTS_SOCKETS_FOLDER=/var/run/components"
			c := container(t, d, "nats-jetstream")
			c.Env = append(c.Env, corev1.EnvVar{Name: "DAPR_COMPONENTS_SOCKETS_FOLDER", Value: "/var/run/components"})
		}, ""},
		{"own socket volume", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Spec.Volumes = append(d.Spec.Template.Spec.Volumes, corev1.Volume{Name: "sockets", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
			c := container(t, d, "nats-jetstream")
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "sockets", MountPath: "/tmp/dapr-components-sockets"})
		}, `creates its socket in volume "sockets" but daprd looks in volume "dapr-components-unix-domain-socket"`},
		{"not declared", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			delete(d.Spec.Template.Annotations, "dapr.io/pluggable-components")
		}, "no pluggable component container in the pod"},
		{"declared name typo", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["dapr.io/pluggable-components"] = "nats-jetstreams"
		}, `names "nats-jetstreams", which is not a container`},
		{"injection off", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			delete(d.Spec.Template.Annotations, "dapr.io/inject-pluggable-components")
		}, "no pluggable component container in the pod"},
		{"out of scope", "deploy/injected", func(t *testing.T, c *componentsapi.Component, _ *appsv1.Deployment) {
			c.Scopes = []string{"orders"}
		}, "no pluggable component container in the pod"},
		{"short grace period", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Spec.TerminationGracePeriodSeconds = new(int64(20))
		}, "terminationGracePeriodSeconds 20 is not longer than container nats-jetstream's -drain-timeout 20s"},
		{"other user without fsGroup", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Spec.SecurityContext = nil
			container(t, d, "nats-jetstream").SecurityContext.RunAsUser = new(int64(1000))
		}, "daprd runs as uid 65532 and container nats-jetstream as uid 1000"},
		{"other user with fsGroup", "deploy/manual", manualCtr(func(c *corev1.Container) { c.SecurityContext.RunAsUser = new(int64(1000)) }), ""},
		{"owner-only socket, other user", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.SecurityContext.RunAsUser = new(int64(1000))
			c.Args = append(c.Args, "-socket-mode=0600")
		}), "with socket mode 0600 daprd gets permission denied"},
		{"world-writable socket", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "JETSTREAM_SOCKET_MODE", Value: "0666"})
		}), "socket mode 0666"},
		{"shell probe", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.StartupProbe.Exec.Command = []string{"/bin/sh", "-c", "test -S /tmp/dapr-components-sockets/nats-jetstream.sock"}
		}), "startupProbe: command"},
		{"tcp probe", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.LivenessProbe.HTTPGet = nil
			c.LivenessProbe.TCPSocket = &corev1.TCPSocketAction{Port: intstr.FromInt32(4222)}
		}), "livenessProbe is neither an exec action nor an httpGet on -metrics-addr"},
		{"exec probes", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.ReadinessProbe.HTTPGet = nil
			c.ReadinessProbe.Exec = &corev1.ExecAction{Command: []string{"/dapr-nats-jetstream", "healthcheck", "-nats"}}
		}), ""},
		{"liveness on readyz", "deploy/manual", manualCtr(func(c *corev1.Container) { c.LivenessProbe.HTTPGet.Path = "/readyz" }),
			`livenessProbe gets "/readyz"; want "/healthz"`},
		{"readiness on healthz", "deploy/injected", func(t *testing.T, c *componentsapi.Component, _ *appsv1.Deployment) {
			c.Annotations["dapr.io/component-container"] = strings.Replace(c.Annotations["dapr.io/component-container"], `"/readyz"`, `"/healthz"`, 1)
		}, `readinessProbe gets "/healthz"; want "/readyz"`},
		{"probe on daprd's port", "deploy/manual", manualCtr(func(c *corev1.Container) { c.ReadinessProbe.HTTPGet.Port = intstr.FromInt32(9090) }),
			"readinessProbe gets port 9090 but -metrics-addr serves on 9095"},
		{"probe port not declared", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Ports = nil }),
			`names port "js-metrics", which container nats-jetstream does not declare`},
		{"metrics off", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Args = []string{"-drain-timeout=20s"} }),
			"livenessProbe is an httpGet, but metrics are off"},
		{"metrics from env", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.Args = []string{"-drain-timeout=20s"}
			c.Env = append(c.Env, corev1.EnvVar{Name: "JETSTREAM_METRICS_ADDR", Value: ":9095"})
		}), ""},
		{"metrics on loopback", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Args = []string{"-metrics-addr=localhost:9095"} }),
			`-metrics-addr "localhost:9095" listens on localhost only`},
		{"metrics port moved alone", "deploy/injected", func(t *testing.T, c *componentsapi.Component, _ *appsv1.Deployment) {
			c.Annotations["dapr.io/component-container"] = strings.Replace(c.Annotations["dapr.io/component-container"], "-metrics-addr=:9095", "-metrics-addr=:9096", 1)
		}, `pod annotation prometheus.io/port is "9095" but -metrics-addr serves on 9096`},
		{"metrics on daprd's port", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			c := container(t, d, "nats-jetstream")
			c.Args = []string{"-metrics-addr=:9090"}
			c.Ports[0].ContainerPort = 9090
			d.Spec.Template.Annotations["prometheus.io/port"] = "9090"
		}, "port 9090 clashes with container daprd's port dapr-metrics"},
		{"not scraped", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			delete(d.Spec.Template.Annotations, "prometheus.io/scrape")
		}, `wants the pod annotation prometheus.io/scrape: "true"`},
		{"scrape path", "deploy/manual", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["prometheus.io/path"] = "/"
		}, `pod annotation prometheus.io/path is "/"`},
		{"no probes", "deploy/manual", manualCtr(func(c *corev1.Container) { c.StartupProbe = nil }), "wants startup, liveness and readiness probes"},
		{"no limits", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Resources.Limits = nil }), "wants both a request and a limit for cpu"},
		{"GOMEMLIMIT above limit", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env[0].Value = "1GiB" }), "GOMEMLIMIT"},
		{"GOGC without GOMEMLIMIT", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env = c.Env[1:] }), `GOGC "400" lets the heap grow beyond Go's default, so it needs GOMEMLIMIT`},
		{"GOGC not a number", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env[1].Value = "4x" }), `GOGC "4x" is neither a percentage nor off`},
		{"GOMAXPROCS unset under a small limit", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env = c.Env[:2] }),
			"the CPU limit 500m is at most one core, but Go runs 2 threads at once under any limit unless GOMAXPROCS is set; set GOMAXPROCS to 1"},
		{"GOMAXPROCS above the limit", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env[2].Value = "2" }),
			`GOMAXPROCS "2" runs more threads at once than the CPU limit 500m allows, so they are throttled; set it to 1 or raise the limit`},
		{"GOMAXPROCS with a raised limit", "deploy/manual", manualCtr(func(c *corev1.Container) {
			c.Env[2].Value = "2"
			c.Resources.Limits[corev1.ResourceCPU] = resource.MustParse("1500m")
		}), ""},
		{"GOMAXPROCS not a number", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Env[2].Value = "one" }), `GOMAXPROCS "one" is not a positive number of threads`},
		{"writable root", "deploy/manual", manualCtr(func(c *corev1.Container) { c.SecurityContext.ReadOnlyRootFilesystem = nil }), "readOnlyRootFilesystem"},
		{"root allowed", "deploy/manual", manualCtr(func(c *corev1.Container) { c.SecurityContext.RunAsNonRoot = nil }), "runAsNonRoot"},
		{"other image", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Image = "ghcr.io/someone/else:1" }), "is not the image `make image` builds"},
		{"command override", "deploy/manual", manualCtr(func(c *corev1.Container) { c.Command = []string{"/bin/dapr-nats-jetstream"} }), "replaces the image's ENTRYPOINT"},
		{"wrong app port", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["dapr.io/app-port"] = "8080"
		}, `dapr.io/app-port "8080" is not a port of the app container(s) [3000]`},
		{"native sidecar", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Annotations["dapr.io/enable-native-sidecar"] = "true"
		}, "starts daprd as an init container"},
		{"selector", "deploy/injected", func(t *testing.T, _ *componentsapi.Component, d *appsv1.Deployment) {
			d.Spec.Template.Labels = map[string]string{"app": "tweets"}
		}, "selector does not match"},
		{"both mechanisms", "deploy/manual", func(t *testing.T, c *componentsapi.Component, d *appsv1.Deployment) {
			injected, _ := bundle(t, "deploy/injected")
			c.Annotations = injected[0].Annotations
			d.Spec.Template.Annotations["dapr.io/inject-pluggable-components"] = "true"
		}, `two containers named "nats-jetstream"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			comps, dep := bundle(t, tc.dir)
			if p := checkDeployment(dep, comps, base); len(p) > 0 {
				t.Fatalf("the shipped %s already fails: %v", tc.dir, p)
			}
			tc.mutate(t, comps[0], dep)
			p := checkDeployment(dep, comps, base)
			if tc.want == "" {
				for _, err := range p {
					t.Errorf("a correct variant was refused: %v", err)
				}
				return
			}
			expectProblem(t, p, tc.want)
		})
	}
}

func TestDockerfileMistakesAreFound(t *testing.T) {
	orig := string(readFile(t, "Dockerfile"))
	gomod, err := goModVersion()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, old, new, want string }{
		{"root", "USER 65532:65532", "USER root", `USER "root" is not numeric`},
		{"uid 0", "USER 65532:65532", "USER 0:0", "is root"},
		{"no user", "USER 65532:65532", "", "has no USER"},
		{"entrypoint elsewhere", `ENTRYPOINT ["/dapr-nats-jetstream"]`, `ENTRYPOINT ["/usr/bin/dapr-nats-jetstream"]`, "is not the file the final stage copies in"},
		{"shell entrypoint", `ENTRYPOINT ["/dapr-nats-jetstream"]`, `ENTRYPOINT /dapr-nats-jetstream`, "exec (JSON) form"},
		{"copy another file", "COPY --from=build /out/dapr-nats-jetstream /dapr-nats-jetstream", "COPY --from=build /out/other /dapr-nats-jetstream", "but the final stage copies /out/other"},
		{"copy from nowhere", "COPY --from=build ", "COPY --from=builder ", "names no earlier stage"},
		{"cgo", "CGO_ENABLED=0", "CGO_ENABLED=1", "lacks CGO_ENABLED=0"},
		{"no trimpath", "-trimpath", "", "lacks -trimpath"},
		{"not stripped", `-ldflags "-s -w"`, "", "lacks -s -w"},
		{"old Go", "ARG GO_VERSION=1.26", "ARG GO_VERSION=1.25", "older than go.mod"},
		{"big base", "FROM gcr.io/distroless/static-debian12:nonroot", "FROM debian:12", "want scratch or gcr.io/distroless/static"},
		{"no volume", `VOLUME ["/tmp/dapr-components-sockets"]`, "", "want VOLUME /tmp/dapr-components-sockets"},
	}
	if _, _, p := checkDockerfile(orig, gomod); len(p) > 0 {
		t.Fatalf("the shipped Dockerfile already fails: %v", p)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(orig, tc.old) {
				t.Fatalf("the Dockerfile no longer contains %q; update this case", tc.old)
			}
			_, _, p := checkDockerfile(strings.Replace(orig, tc.old, tc.new, 1), gomod)
			expectProblem(t, p, tc.want)
		})
	}
}

func TestStrictDecodingRejects(t *testing.T) {
	dep := string(readFile(t, "deploy/injected/deployment.yaml"))
	comp := string(readFile(t, "deploy/injected/component.yaml"))
	cases := []struct{ name, doc, old, new, want string }{
		{"unknown field", dep, "terminationGracePeriodSeconds:", "terminationGracePeriod:", `unknown field "spec.template.spec.terminationGracePeriod"`},
		{"wrong case", dep, "  replicas: 2", "  Replicas: 2", `unknown field "spec.Replicas"`},
		{"duplicate key", dep, "  replicas: 2", "  replicas: 2\n  replicas: 3", "replicas"},
		{"wrong type", dep, "  replicas: 2", "  replicas: two", "replicas"},
		{"Component field", comp, "scopes:", "scope:", `unknown field "scope"`},
		{"Component metadata item", comp, "    - name: streamMaxAge\n      value: 168h", "    - name: streamMaxAge\n      valeu: 168h", `unknown field "spec.metadata[6].valeu"`},
		{"unknown kind", dep, "kind: Deployment", "kind: Deploymnet", "not a kind this test knows"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.doc, tc.old) {
				t.Fatalf("the manifest no longer contains %q; update this case", tc.old)
			}
			docs, err := splitYAML([]byte(strings.Replace(tc.doc, tc.old, tc.new, 1)))
			if err == nil {
				_, err = decodeManifest("mutated", 0, docs[0])
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestKustomizeMistakesAreFound(t *testing.T) {
	injected, err := filepath.Abs(repoPath("deploy/injected"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, kustomization, want string }{
		{"patch on the wrong entry", `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + injected + `
patches:
  - target: {kind: Component, name: pubsub}
    patch: |-
      - op: test
        path: /spec/metadata/4/name
        value: streamReplicas
      - op: replace
        path: /spec/metadata/4/value
        value: "1"
`, "patch 0 on"},
		{"patch matches nothing", `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + injected + `
patches:
  - target: {kind: Component, name: pubsub-dev}
    patch: "[]"
`, "matches no resource"},
		{"file outside the root", `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ` + filepath.Join(injected, "component.yaml") + `
`, "outside"},
		{"unsupported field", `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: apps
resources:
  - ` + injected + `
`, `unknown field "namespace"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(tc.kustomization), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := render(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNATSValuesMistakesAreFound(t *testing.T) {
	orig := string(readFile(t, "deploy/nats/values.yaml"))
	nsecrets, err := secretsIn(natsSecrets, "nats")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, old, new, want string }{
		{"no JetStream", "  jetstream:\n    enabled: true", "  jetstream:\n    enabled: false", "config.jetstream.enabled is false"},
		{"memory only", "    fileStore:\n      enabled: true", "    fileStore:\n      enabled: false", "config.jetstream.fileStore.enabled is false"},
		{"even cluster", "    replicas: 3", "    replicas: 2", "want an odd number"},
		{"bad size", "        size: 10Gi", "        size: ten", "pvc.size"},
		{"inline token", "      token: << $NATS_TOKEN >>", "      token: s3cret", "want << $VAR >>"},
		{"token from nowhere", "          name: nats-auth", "          name: nats-token", "must come from a secretKeyRef"},
		{"no install line", "helm upgrade --install nats nats/nats", "helm install nats nats/nats", "must show the helm upgrade --install"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(orig, tc.old) {
				t.Fatalf("values.yaml no longer contains %q; update this case", tc.old)
			}
			_, p := checkNATSValues("values.yaml", []byte(strings.Replace(orig, tc.old, tc.new, 1)), true, nsecrets)
			expectProblem(t, p, tc.want)
		})
	}
	inst, _ := checkNATSValues("values.yaml", []byte(strings.ReplaceAll(orig, "--install nats nats/nats --namespace nats", "--install broker nats/nats --namespace messaging")), true, nsecrets)
	if inst.Host != "broker-nats.messaging.svc.cluster.local" {
		t.Errorf("release broker in messaging: host %s, want the chart's broker-nats.messaging.svc.cluster.local", inst.Host)
	}
}

func TestParseArgs(t *testing.T) {
	known := map[string]bool{"socket-name": true, "drain-timeout": true}
	got, err := parseArgs([]string{"-socket-name=a", "--drain-timeout", "3s"}, known)
	if err != nil || got["socket-name"] != "a" || got["drain-timeout"] != "3s" {
		t.Errorf("got %v, %v", got, err)
	}
	for _, bad := range [][]string{{"socket-name=a"}, {"-socket-name"}, {"-other=1"}} {
		if _, err := parseArgs(bad, known); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}
