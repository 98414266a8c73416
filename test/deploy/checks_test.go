package deploy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	componentsapi "github.com/dapr/dapr/pkg/apis/components/v1alpha1"
	daprpluggable "github.com/dapr/dapr/pkg/components/pluggable"
	"github.com/dapr/dapr/pkg/injector/annotations"
	injectorconsts "github.com/dapr/dapr/pkg/injector/consts"
	"github.com/dapr/dapr/pkg/injector/patcher"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

const (
	// daprdUID is the user daprd's image runs as (dapr/dapr docker/Dockerfile:
	// USER 65532:65532). The injector sets no runAsUser unless configured to.
	daprdUID = 65532
	// daprdSocketFolder is where daprd looks for component sockets when
	// DAPR_COMPONENTS_SOCKETS_FOLDER is not set in its container
	// (dapr pkg/components/pluggable/discovery.go, defaultSocketFolder).
	daprdSocketFolder = "/tmp/dapr-components-sockets"
	// grpcStopBound is how long pluggable.Run waits for GracefulStop after
	// the drain, before it stops the gRPC server hard.
	grpcStopBound = 5 * time.Second
)

// healthcheckFlags are the flags of the `healthcheck` subcommand that the
// probes use (see docs/kubernetes.md). "nats" takes no value.
var healthcheckFlags = map[string]bool{"socket-folder": true, "socket-name": true, "timeout": true, "wait": true, "nats": true}

// env is what the checks compare the manifests with.
type env struct {
	// Schema holds the fields of metadata/metadata.yaml.
	Schema map[string]metadataField
	// Flags and Envs are what main.go defines and reads.
	Flags, Envs map[string]bool
	// Secrets maps the Secrets a Component may reference (name -> keys).
	Secrets map[string][]string
	// NATSHost is the NATS client Service's DNS name; empty skips the check.
	NATSHost string
	// NATSServers is the size of the NATS cluster the Components talk to.
	NATSServers int
	// Image is the image repository of `make image`, without tag.
	Image string
	// Entrypoint is the ENTRYPOINT binary of the Dockerfile, and ImageUID the
	// user of its final stage.
	Entrypoint string
	ImageUID   int64
}

type problems []error

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Errorf(format, args...)) }

// ---- Components ----

// placeholders stand in for values read from secrets when the metadata is
// parsed; they only have to be well-formed.
var placeholders = map[string]string{
	"nkeySeed": "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY",
	"seedKey":  "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY",
}

// checkComponent checks one Component: its metadata names against
// metadata.yaml, secrets by reference only, the values through the
// component's own parser, and the NATS address and replica counts against the
// NATS install. inCluster is false for the root component.yaml, which is for
// `dapr run` and has no secret store.
func checkComponent(c *componentsapi.Component, e env, inCluster bool) problems {
	var p problems
	where := "Component " + c.Name
	if !strings.HasPrefix(c.Spec.Type, "pubsub.") {
		p.add("%s: type %q is not a pub/sub type (pubsub.<socket name>)", where, c.Spec.Type)
	}
	if c.Spec.Version != "v1" {
		p.add("%s: version %q, want v1", where, c.Spec.Version)
	}
	props := map[string]string{}
	seen := map[string]string{}
	usesSecrets := false
	for _, m := range c.Spec.Metadata {
		if prev, dup := seen[strings.ToLower(m.Name)]; dup {
			p.add("%s: metadata %q is set twice (also as %q)", where, m.Name, prev)
		}
		seen[strings.ToLower(m.Name)] = m.Name
		field, known := e.Schema[m.Name]
		// consumerID is not in metadata.yaml because daprd sets it, but a
		// Component may set it, as with the built-in component.
		if !known && m.Name != "consumerID" {
			p.add("%s: metadata %q is not a field of metadata/metadata.yaml (fields are case-sensitive here; a misspelt field is silently ignored by Dapr)", where, m.Name)
		}
		sources := 0
		if m.HasValue() {
			sources++
		}
		if m.SecretKeyRef.Name != "" {
			sources++
		}
		if m.EnvRef != "" {
			sources++
		}
		if sources != 1 {
			p.add("%s: metadata %q must have exactly one of value, secretKeyRef and envRef", where, m.Name)
			continue
		}
		switch {
		case m.SecretKeyRef.Name != "":
			usesSecrets = true
			if m.SecretKeyRef.Key == "" {
				p.add("%s: metadata %q: secretKeyRef %q names no key", where, m.Name, m.SecretKeyRef.Name)
			}
			if inCluster {
				keys, ok := e.Secrets[m.SecretKeyRef.Name]
				switch {
				case !ok:
					p.add("%s: metadata %q: Secret %q is not among the shipped Secrets", where, m.Name, m.SecretKeyRef.Name)
				case !slices.Contains(keys, m.SecretKeyRef.Key):
					p.add("%s: metadata %q: Secret %q has no key %q (it has %v)", where, m.Name, m.SecretKeyRef.Name, m.SecretKeyRef.Key, keys)
				}
			}
			props[m.Name] = placeholders[m.Name]
			if props[m.Name] == "" {
				props[m.Name] = "from-a-secret"
			}
		case m.EnvRef != "":
			props[m.Name] = "from-" + m.EnvRef
		default:
			if field.Sensitive {
				p.add("%s: metadata %q is sensitive and must come from a secretKeyRef, not an inline value", where, m.Name)
			}
			props[m.Name] = m.Value.String()
		}
	}
	if usesSecrets && inCluster && c.Auth.SecretStore != "kubernetes" {
		p.add("%s: uses secretKeyRef but auth.secretStore is %q; set it to kubernetes", where, c.Auth.SecretStore)
	}
	if cc := c.Annotations[annotations.KeyPluggableComponentContainer]; cc != "" {
		// The injector unmarshals this leniently and silently skips the
		// container when it fails; here it must be an exact Container.
		var ctr corev1.Container
		if err := strictJSON([]byte(cc), &ctr); err != nil {
			p.add("%s: annotation %s is not a valid Container: %v", where, annotations.KeyPluggableComponentContainer, err)
		}
	}

	cfg, err := metadata.Parse(props)
	if err != nil {
		p.add("%s: the component would refuse this metadata at Init: %v", where, err)
		return p
	}
	if e.NATSHost != "" {
		for _, u := range strings.Split(props["natsURL"], ",") {
			pu, err := url.Parse(strings.TrimSpace(u))
			if err != nil || pu.Hostname() != e.NATSHost || pu.Port() != "4222" {
				p.add("%s: natsURL %q does not point at the NATS Service %s:4222 that deploy/nats installs", where, u, e.NATSHost)
			}
		}
	}
	if e.NATSServers > 0 {
		if cfg.Stream.Replicas > e.NATSServers {
			p.add("%s: streamReplicas %d exceeds the %d NATS server(s) it is deployed with", where, cfg.Stream.Replicas, e.NATSServers)
		}
		if cfg.Consumer.Replicas > e.NATSServers {
			p.add("%s: replicas %d exceeds the %d NATS server(s) it is deployed with", where, cfg.Consumer.Replicas, e.NATSServers)
		}
	}
	if cfg.Consumer.Replicas > cfg.Stream.Replicas {
		p.add("%s: consumer replicas %d exceeds streamReplicas %d; JetStream refuses such a consumer", where, cfg.Consumer.Replicas, cfg.Stream.Replicas)
	}
	return p
}

// ---- Deployments ----

// inject runs Dapr's sidecar injector on the Deployment's pod template, with
// the Components in the same namespace, and returns the pod it would create.
func inject(d *appsv1.Deployment, comps []*componentsapi.Component) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	pod.Name = d.Name + "-0"
	items := make([]componentsapi.Component, len(comps))
	for i, c := range comps {
		items[i] = *c
	}
	sc := patcher.NewSidecarConfig(pod)
	sc.Namespace = "default"
	sc.Identity = "default:" + pod.Spec.ServiceAccountName
	sc.SentrySPIFFEID = "spiffe://cluster.local/ns/dapr-system/dapr-sentry"
	sc.SidecarImage = "ghcr.io/dapr/daprd:1.18.1"
	sc.GetInjectedComponentContainers = func(appID, _ string) ([]corev1.Container, error) {
		return patcher.Injectable(appID, items), nil
	}
	sc.SetFromPodAnnotations()
	patch, err := sc.GetPatch()
	if err != nil {
		return nil, err
	}
	if patch == nil {
		return nil, fmt.Errorf("the injector does not patch this pod (is dapr.io/enabled \"true\"?)")
	}
	return patcher.PatchPod(pod, patch)
}

// socketOf is where a component container serves, from its args and env.
type socketOf struct {
	Folder, Name, Mode string
	Drain              time.Duration
}

func containerEnv(c *corev1.Container, name string) (string, bool, error) {
	for _, ev := range c.Env {
		if ev.Name == name {
			if ev.ValueFrom != nil {
				return "", true, fmt.Errorf("container %s: %s comes from valueFrom, which this test cannot resolve", c.Name, name)
			}
			return ev.Value, true, nil
		}
	}
	return "", false, nil
}

func componentSocket(c *corev1.Container, e env) (socketOf, error) {
	args, err := parseArgs(c.Args, e.Flags)
	if err != nil {
		return socketOf{}, fmt.Errorf("container %s: %w", c.Name, err)
	}
	pick := func(flag, envName, def string) (string, error) {
		if v, ok := args[flag]; ok {
			return v, nil
		}
		if envName != "" {
			if !e.Envs[envName] {
				return "", fmt.Errorf("main.go no longer reads %s", envName)
			}
			if v, ok, err := containerEnv(c, envName); err != nil || (ok && v != "") {
				return v, err
			}
		}
		return def, nil
	}
	var s socketOf
	if s.Folder, err = pick("socket-folder", daprpluggable.SocketFolderEnvVar, pluggable.DefaultSocketFolder); err != nil {
		return s, err
	}
	if s.Name, err = pick("socket-name", "JETSTREAM_SOCKET_NAME", pluggable.DefaultSocketName); err != nil {
		return s, err
	}
	if s.Mode, err = pick("socket-mode", "JETSTREAM_SOCKET_MODE", "0660"); err != nil {
		return s, err
	}
	drain, err := pick("drain-timeout", "", pluggable.DefaultDrainTimeout.String())
	if err != nil {
		return s, err
	}
	if s.Drain, err = time.ParseDuration(drain); err != nil {
		return s, fmt.Errorf("container %s: -drain-timeout %q: %w", c.Name, drain, err)
	}
	if lvl, ok := args["log-level"]; ok && !slices.Contains([]string{"debug", "info", "warn", "error"}, lvl) {
		return s, fmt.Errorf("container %s: -log-level %q is not debug, info, warn or error", c.Name, lvl)
	}
	return s, nil
}

func mountAt(c *corev1.Container, dir string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if path.Clean(c.VolumeMounts[i].MountPath) == path.Clean(dir) {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func imageRepo(image string) string {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// checkGOGC checks that a GOGC which lets the heap grow further than Go's
// default (above 100, or off) comes with a GOMEMLIMIT: without one, the
// heap of a component holding large messages could grow past the
// container's memory limit.
func checkGOGC(p *problems, where string, c *corev1.Container) {
	v, ok, err := containerEnv(c, "GOGC")
	if err != nil || !ok {
		return
	}
	if v != "off" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			p.add("%s: GOGC %q is neither a percentage nor off", where, v)
			return
		}
		if n <= 100 {
			return
		}
	}
	if _, limited, _ := containerEnv(c, "GOMEMLIMIT"); !limited {
		p.add("%s: GOGC %q lets the heap grow beyond Go's default, so it needs GOMEMLIMIT below the memory limit too", where, v)
	}
}

// checkGOMAXPROCS checks that the component runs no more threads at once
// than its CPU limit allows. Go sets GOMAXPROCS to the limit rounded up, but
// to no less than 2, so under a limit of a core or less it must be set.
// More threads than the limit spend the quota in bursts and are throttled
// for the rest of each period, and they wake each other for every message.
func checkGOMAXPROCS(p *problems, where string, c *corev1.Container) {
	lim, limited := c.Resources.Limits[corev1.ResourceCPU]
	cores := int64(0)
	if limited {
		cores = max(1, (lim.MilliValue()+999)/1000)
	}
	v, ok, err := containerEnv(c, "GOMAXPROCS")
	if err != nil {
		return
	}
	if !ok {
		if limited && cores < 2 {
			p.add("%s: the CPU limit %s is at most one core, but Go runs 2 threads at once under any limit unless GOMAXPROCS is set; set GOMAXPROCS to 1", where, lim.String())
		}
		return
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		p.add("%s: GOMAXPROCS %q is not a positive number of threads", where, v)
		return
	}
	if limited && int64(n) > cores {
		p.add("%s: GOMAXPROCS %q runs more threads at once than the CPU limit %s allows, so they are throttled; set it to %d or raise the limit", where, v, lim.String(), cores)
	}
}

// goMemLimit parses a GOMEMLIMIT value (bytes with an optional B, KiB, MiB,
// GiB or TiB suffix).
func goMemLimit(v string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n * mult, err
}

// checkExec checks an exec probe or hook of the component container: it runs
// the image's binary with the healthcheck subcommand, on the same socket as
// the server (exec inherits the container's env, but not its args).
func checkExec(p *problems, where string, ex *corev1.ExecAction, c *corev1.Container, sock socketOf, e env) {
	if ex == nil {
		p.add("%s is neither an exec action nor an httpGet on -metrics-addr", where)
		return
	}
	cmd := ex.Command
	if len(cmd) < 2 || cmd[0] != e.Entrypoint || cmd[1] != "healthcheck" {
		p.add("%s: command %q, want [%s healthcheck ...]", where, cmd, e.Entrypoint)
		return
	}
	var rest []string
	for _, a := range cmd[2:] {
		// -nats is a boolean flag; give it a value for parseArgs.
		if strings.TrimLeft(a, "-") == "nats" {
			a += "=true"
		}
		rest = append(rest, a)
	}
	args, err := parseArgs(rest, healthcheckFlags)
	if err != nil {
		p.add("%s: %v", where, err)
		return
	}
	probe := c.DeepCopy()
	probe.Args = nil
	for _, k := range []string{"socket-folder", "socket-name"} {
		if v, ok := args[k]; ok {
			probe.Args = append(probe.Args, "-"+k+"="+v)
		}
	}
	ps, err := componentSocket(probe, e)
	if err != nil {
		p.add("%s: %v", where, err)
		return
	}
	if ps.Folder != sock.Folder || ps.Name != sock.Name {
		p.add("%s checks %s/%s.sock but the server listens on %s/%s.sock; pass the same -socket-folder/-socket-name to healthcheck", where, ps.Folder, ps.Name, sock.Folder, sock.Name)
	}
	for _, k := range []string{"timeout", "wait"} {
		if v, ok := args[k]; ok {
			if _, err := time.ParseDuration(v); err != nil {
				p.add("%s: -%s %q: %v", where, k, v, err)
			}
		}
	}
}

func checkComponentContainer(p *problems, c *corev1.Container, pod *corev1.Pod, e env) (socketOf, bool) {
	where := "component container " + c.Name
	sock, err := componentSocket(c, e)
	if err != nil {
		p.add("%s: %v", where, err)
		return sock, false
	}
	if len(c.Command) > 0 && c.Command[0] != e.Entrypoint {
		p.add("%s: command %q replaces the image's ENTRYPOINT %s", where, c.Command, e.Entrypoint)
	}
	if imageRepo(c.Image) != e.Image {
		p.add("%s: image %q is not the image `make image` builds (%s)", where, c.Image, e.Image)
	}
	mode, err := strconv.ParseUint(sock.Mode, 8, 32)
	switch {
	case err != nil:
		p.add("%s: socket mode %q is not octal", where, sock.Mode)
	case mode&0o007 != 0 || mode&0o600 != 0o600:
		p.add("%s: socket mode %#o: the binary refuses any access for others, and the owner needs rw", where, mode)
	}

	// Probes and the postStart hook.
	if c.StartupProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe == nil {
		p.add("%s: wants startup, liveness and readiness probes", where)
	}
	port, err := metricsPort(c, e)
	if err != nil {
		p.add("%s: %v", where, err)
	}
	for name, pr := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
		if pr != nil {
			checkProbe(p, where, name, pr, c, sock, e, port)
		}
	}
	if err == nil {
		checkScrape(p, where, c, pod, port)
	}
	if c.Lifecycle != nil && c.Lifecycle.PostStart != nil {
		checkExec(p, where+" postStart", c.Lifecycle.PostStart.Exec, c, sock, e)
	}

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[r]
		lim, hasLim := c.Resources.Limits[r]
		if !hasReq || !hasLim {
			p.add("%s: wants both a request and a limit for %s", where, r)
			continue
		}
		if req.Cmp(lim) > 0 {
			p.add("%s: %s request %s exceeds its limit %s", where, r, req.String(), lim.String())
		}
	}
	if v, ok, err := containerEnv(c, "GOMEMLIMIT"); err == nil && ok {
		n, err := goMemLimit(v)
		lim, hasLim := c.Resources.Limits[corev1.ResourceMemory]
		if err != nil || (hasLim && n >= lim.Value()) {
			p.add("%s: GOMEMLIMIT %q must be a size below the memory limit", where, v)
		}
	}
	checkGOGC(p, where, c)
	checkGOMAXPROCS(p, where, c)

	// Security.
	sc := c.SecurityContext
	podSC := pod.Spec.SecurityContext
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	nonRoot := sc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = podSC.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		p.add("%s: wants securityContext.runAsNonRoot: true", where)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		p.add("%s: wants securityContext.allowPrivilegeEscalation: false", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		p.add("%s: wants securityContext.readOnlyRootFilesystem: true (it writes only the socket)", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		p.add("%s: wants securityContext.capabilities.drop: [ALL]", where)
	}
	return sock, true
}

func uidOf(c *corev1.Container, pod *corev1.Pod, image int64) int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return *c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.RunAsUser != nil {
		return *pod.Spec.SecurityContext.RunAsUser
	}
	return image
}

// checkDeployment injects Dapr into a Deployment, with the Components
// deployed alongside it, and checks the pod that results.
func checkDeployment(d *appsv1.Deployment, comps []*componentsapi.Component, e env) problems {
	var p problems
	where := "Deployment " + d.Name
	sel, err := metav1LabelSelector(d)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		p.add("%s: selector does not match the pod template's labels", where)
	}
	an := d.Spec.Template.Annotations
	if an[annotations.KeyEnabled] != "true" {
		p.add("%s: wants the pod annotation %s: \"true\"", where, annotations.KeyEnabled)
		return p
	}
	appID := an[annotations.KeyAppID]
	if appID == "" {
		p.add("%s: wants the pod annotation %s", where, annotations.KeyAppID)
	}
	if v, _ := strconv.ParseBool(an[annotations.KeyEnableNativeSidecar]); v {
		p.add("%s: %s starts daprd as an init container, before the component container, and daprd looks for sockets only when it starts", where, annotations.KeyEnableNativeSidecar)
	}

	pod, err := inject(d, comps)
	if err != nil {
		p.add("%s: Dapr's injector: %v", where, err)
		return p
	}
	names := map[string]bool{}
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		if names[c.Name] {
			p.add("%s: two containers named %q after injection", where, c.Name)
		}
		names[c.Name] = true
	}
	var daprd *corev1.Container
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range list {
			if list[i].Name == injectorconsts.SidecarContainerName {
				daprd = &list[i]
			}
		}
	}
	if daprd == nil {
		p.add("%s: no daprd container after injection", where)
		return p
	}
	discovery, ok, err := containerEnv(daprd, daprpluggable.SocketFolderEnvVar)
	if err != nil {
		p.add("%s: %v", where, err)
	}
	if !ok || discovery == "" {
		discovery = daprdSocketFolder
	}
	daprdMount := mountAt(daprd, discovery)
	if daprdMount == nil {
		p.add("%s: daprd looks for sockets in %s but nothing is mounted there, so it can share no socket with a component container (a non-default %s must also be given to daprd, as %s in %s)",
			where, discovery, annotations.KeyPluggableComponentsSocketsFolder, daprpluggable.SocketFolderEnvVar, annotations.KeyEnv)
	}

	// The component containers: those named in dapr.io/pluggable-components,
	// and those the injector added from Components.
	original := map[string]bool{}
	for _, c := range d.Spec.Template.Spec.Containers {
		original[c.Name] = true
	}
	declared := map[string]bool{}
	for _, n := range strings.Split(an[annotations.KeyPluggableComponents], ",") {
		if n = strings.TrimSpace(n); n != "" {
			declared[n] = true
			if !original[n] {
				p.add("%s: %s names %q, which is not a container of the pod", where, annotations.KeyPluggableComponents, n)
			}
		}
	}
	var appPorts []int32
	served := map[string]string{} // lower-case type -> container
	found := 0
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name == injectorconsts.SidecarContainerName {
			continue
		}
		if !declared[c.Name] && original[c.Name] {
			for _, port := range c.Ports {
				appPorts = append(appPorts, port.ContainerPort)
			}
			continue
		}
		found++
		sock, ok := checkComponentContainer(&p, c, pod, e)
		if !ok {
			continue
		}
		served[strings.ToLower("pubsub."+sock.Name)] = c.Name
		m := mountAt(c, sock.Folder)
		switch {
		case m == nil:
			p.add("%s: container %s creates its socket in %s, where nothing is mounted, so daprd cannot see it", where, c.Name, sock.Folder)
		case daprdMount != nil && m.Name != daprdMount.Name:
			p.add("%s: container %s creates its socket in volume %q but daprd looks in volume %q", where, c.Name, m.Name, daprdMount.Name)
		}
		if m != nil {
			for _, v := range pod.Spec.Volumes {
				if v.Name == m.Name && v.EmptyDir == nil {
					p.add("%s: the socket volume %q is not an emptyDir", where, v.Name)
				}
			}
		}
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		if pod.Spec.TerminationGracePeriodSeconds != nil {
			grace = *pod.Spec.TerminationGracePeriodSeconds
		}
		if time.Duration(grace)*time.Second <= sock.Drain+grpcStopBound {
			p.add("%s: terminationGracePeriodSeconds %d is not longer than container %s's -drain-timeout %s plus %s for the gRPC stop; the kubelet would kill it mid-drain",
				where, grace, c.Name, sock.Drain, grpcStopBound)
		}
		// daprd must be able to open the socket: as its owner, or through the
		// pod's fsGroup, which owns the emptyDir (setgid) and is a group of
		// every container.
		mode, _ := strconv.ParseUint(sock.Mode, 8, 32)
		compUID := uidOf(c, pod, e.ImageUID)
		dUID := uidOf(daprd, pod, daprdUID)
		fsGroup := pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil
		if compUID != dUID && (!fsGroup || mode&0o060 != 0o060) {
			p.add("%s: daprd runs as uid %d and container %s as uid %d; with socket mode %s daprd gets permission denied unless the pod sets securityContext.fsGroup",
				where, dUID, c.Name, compUID, sock.Mode)
		}
	}
	if found == 0 {
		p.add("%s: no pluggable component container in the pod after injection (neither %s nor %s brought one)", where, annotations.KeyPluggableComponents, annotations.KeyPluggableComponentsInjection)
	}
	if port := an[annotations.KeyAppPort]; port != "" {
		n, err := strconv.ParseInt(port, 10, 32)
		if err != nil || !slices.Contains(appPorts, int32(n)) {
			p.add("%s: %s %q is not a port of the app container(s) %v", where, annotations.KeyAppPort, port, appPorts)
		}
	}

	// Every pub/sub Component in scope needs a container that serves its
	// type, and every component container must serve a Component.
	used := map[string]bool{}
	for _, c := range comps {
		if len(c.Scopes) > 0 && !slices.Contains(c.Scopes, appID) {
			continue
		}
		t := strings.ToLower(c.Spec.Type)
		if !strings.HasPrefix(t, "pubsub.") {
			continue
		}
		if ctr, ok := served[t]; ok {
			used[ctr] = true
			continue
		}
		var have []string
		for k := range served {
			have = append(have, k)
		}
		slices.Sort(have)
		p.add("%s: Component %s has type %s, but the component containers serve %v (the type is pubsub.<-socket-name or JETSTREAM_SOCKET_NAME>)", where, c.Name, c.Spec.Type, have)
	}
	for t, ctr := range served {
		if !used[ctr] {
			p.add("%s: container %s serves %s, which no Component in scope uses", where, ctr, t)
		}
	}
	return p
}

func metav1LabelSelector(d *appsv1.Deployment) (labels.Selector, error) {
	if d.Spec.Selector == nil {
		return nil, fmt.Errorf("no selector")
	}
	sel := labels.Set(d.Spec.Selector.MatchLabels).AsSelector()
	if len(d.Spec.Selector.MatchExpressions) > 0 {
		return nil, fmt.Errorf("matchExpressions are not supported by this test")
	}
	return sel, nil
}

// ---- Dockerfile ----

var goBuildOut = regexp.MustCompile(`\s-o\s+(\S+)`)

// checkDockerfile checks the Dockerfile and returns the final stage's
// ENTRYPOINT binary and user.
func checkDockerfile(content, goModVersion string) (entrypoint string, uid int64, p problems) {
	stages, global, err := parseDockerfile(content)
	if err != nil {
		p.add("Dockerfile: %v", err)
		return "", 0, p
	}
	final := stages[len(stages)-1]
	if len(stages) < 2 {
		p.add("Dockerfile: want a multi-stage build (build, then a minimal final stage)")
	}
	if final.From != "scratch" && !strings.HasPrefix(final.From, "gcr.io/distroless/static") {
		p.add("Dockerfile: final stage FROM %s; want scratch or gcr.io/distroless/static*", final.From)
	}
	var user, volume, copyFrom, copySrc, copyDst string
	for _, in := range final.Instrs {
		switch in.Cmd {
		case "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.Args), &argv); err != nil || len(argv) == 0 {
				p.add("Dockerfile:%d: ENTRYPOINT must be the exec (JSON) form; the final image has no shell", in.Line)
				continue
			}
			entrypoint = argv[0]
		case "USER":
			user = in.Args
		case "VOLUME":
			volume += " " + in.Args
		case "COPY":
			f := strings.Fields(in.Args)
			var from string
			var rest []string
			for _, x := range f {
				if v, ok := strings.CutPrefix(x, "--from="); ok {
					from = v
				} else if !strings.HasPrefix(x, "--") {
					rest = append(rest, x)
				}
			}
			if from != "" && len(rest) == 2 {
				dst := rest[1]
				if strings.HasSuffix(dst, "/") {
					dst += path.Base(rest[0])
				}
				if copyDst == "" || dst == entrypoint {
					copyFrom, copySrc, copyDst = from, rest[0], dst
				}
			}
		case "RUN", "ADD":
			p.add("Dockerfile:%d: the final stage should only COPY the binary, not %s", in.Line, in.Cmd)
		}
	}
	switch {
	case entrypoint == "":
		p.add("Dockerfile: the final stage has no ENTRYPOINT")
	case copyDst != entrypoint:
		p.add("Dockerfile: ENTRYPOINT %s is not the file the final stage copies in (COPY --from=... %s)", entrypoint, copyDst)
	}
	uidStr, _, _ := strings.Cut(user, ":")
	n, err := strconv.ParseInt(uidStr, 10, 64)
	switch {
	case user == "":
		p.add("Dockerfile: the final stage has no USER; it would run as root")
	case err != nil:
		p.add("Dockerfile: USER %q is not numeric; Kubernetes' runAsNonRoot can only verify a numeric user", user)
	case n == 0:
		p.add("Dockerfile: USER %q is root", user)
	default:
		uid = n
	}
	if !strings.Contains(volume, pluggable.DefaultSocketFolder) {
		p.add("Dockerfile: want VOLUME %s, the default socket folder", pluggable.DefaultSocketFolder)
	}

	// The stage the binary comes from builds it statically.
	var build *dockerStage
	for i, st := range stages[:len(stages)-1] {
		if st.Name == copyFrom || strconv.Itoa(i) == copyFrom {
			build = &stages[i]
		}
	}
	if build == nil {
		p.add("Dockerfile: COPY --from=%s names no earlier stage", copyFrom)
		return entrypoint, uid, p
	}
	var goBuild string
	for _, in := range build.Instrs {
		if in.Cmd == "RUN" && strings.Contains(in.Args, "go build") {
			goBuild = in.Args
		}
	}
	m := goBuildOut.FindStringSubmatch(goBuild)
	switch {
	case goBuild == "":
		p.add("Dockerfile: stage %s has no RUN go build", build.Name)
	case m == nil || m[1] != copySrc:
		p.add("Dockerfile: stage %s builds %v, but the final stage copies %s", build.Name, m, copySrc)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w"} {
		if !strings.Contains(goBuild, want) {
			p.add("Dockerfile: go build in stage %s lacks %s (static, reproducible, stripped)", build.Name, want)
		}
	}
	// The Go of the build stage must be at least go.mod's.
	for _, in := range global {
		if v, ok := strings.CutPrefix(in.Args, "GO_VERSION="); in.Cmd == "ARG" && ok {
			if !versionAtLeast(v, goModVersion) {
				p.add("Dockerfile: GO_VERSION %s is older than go.mod's go %s", v, goModVersion)
			}
		}
	}
	return entrypoint, uid, p
}

// versionAtLeast compares Go versions; a missing patch means the newest.
func versionAtLeast(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := range w {
		if i >= len(h) {
			return true
		}
		a, _ := strconv.Atoi(h[i])
		b, _ := strconv.Atoi(w[i])
		if a != b {
			return a > b
		}
	}
	return true
}

// ---- .dockerignore ----

// dockerignored reports whether a path (slash-separated, relative to the
// context) matches a .dockerignore pattern. Supports the forms the file
// uses: plain paths and globs, and a leading **/.
func dockerignored(rel string, patterns []string) bool {
	for _, pat := range patterns {
		if strings.HasPrefix(pat, "!") {
			panic("negated .dockerignore patterns are not supported by this test")
		}
		pat = strings.TrimPrefix(strings.TrimSuffix(pat, "/"), "/")
		if rest, ok := strings.CutPrefix(pat, "**/"); ok {
			parts := strings.Split(rel, "/")
			for i := range parts {
				if m, _ := filepath.Match(rest, strings.Join(parts[i:], "/")); m {
					return true
				}
				if m, _ := filepath.Match(rest, parts[i]); m {
					return true
				}
			}
			continue
		}
		parts := strings.Split(rel, "/")
		for i := 1; i <= len(parts); i++ {
			if m, _ := filepath.Match(pat, strings.Join(parts[:i], "/")); m {
				return true
			}
		}
	}
	return false
}

// buildInputs lists the files `go build .` reads from this module: go.mod,
// go.sum, and the Go and embedded files of every package of the module that
// the binary imports.
func buildInputs() ([]string, error) {
	cmd := exec.Command("go", "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}|{{join .GoFiles ","}}|{{join .EmbedFiles ","}}{{end}}{{end}}`, ".")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("go list: %v: %s", err, ee.Stderr)
		}
		return nil, err
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	files := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		if len(parts) != 3 {
			continue
		}
		dir, err := filepath.Rel(abs, parts[0])
		if err != nil {
			return nil, err
		}
		for _, f := range slices.Concat(strings.Split(parts[1], ","), strings.Split(parts[2], ",")) {
			if f != "" {
				files = append(files, filepath.ToSlash(filepath.Join(dir, f)))
			}
		}
	}
	return files, nil
}

// ---- NATS Helm values ----

type natsInstall struct {
	Host    string // the client Service's DNS name
	Servers int
}

var helmInstall = regexp.MustCompile(`helm upgrade --install (\S+) nats/nats --namespace (\S+)`)

func get(m map[string]any, keys ...string) any {
	var cur any = m
	for _, k := range keys {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[k]
	}
	return cur
}

// checkNATSValues checks a values file of the nats/nats chart for the keys
// this deployment relies on, and returns where NATS will answer.
func checkNATSValues(file string, data []byte, cluster bool, secrets map[string][]string) (natsInstall, problems) {
	var p problems
	var v map[string]any
	if err := yaml.Unmarshal(data, &v); err != nil {
		p.add("%s: %v", file, err)
		return natsInstall{}, p
	}
	want := func(val any, keys ...string) {
		if got := get(v, keys...); got != val {
			p.add("%s: %s is %v, want %v", file, strings.Join(keys, "."), got, val)
		}
	}
	want(true, "config", "jetstream", "enabled")
	want(true, "config", "jetstream", "fileStore", "enabled")
	want(true, "config", "jetstream", "fileStore", "pvc", "enabled")
	if s, ok := get(v, "config", "jetstream", "fileStore", "pvc", "size").(string); !ok {
		p.add("%s: config.jetstream.fileStore.pvc.size is not set", file)
	} else if _, err := resource.ParseQuantity(s); err != nil {
		p.add("%s: config.jetstream.fileStore.pvc.size %q: %v", file, s, err)
	}
	inst := natsInstall{Servers: 1}
	if cluster {
		want(true, "config", "cluster", "enabled")
		n, ok := get(v, "config", "cluster", "replicas").(float64)
		if !ok || n < 3 || int(n)%2 == 0 {
			p.add("%s: config.cluster.replicas is %v; want an odd number, 3 or more", file, get(v, "config", "cluster", "replicas"))
		}
		inst.Servers = int(n)
	} else if e, _ := get(v, "config", "cluster", "enabled").(bool); e {
		p.add("%s: a single-server install must not enable config.cluster", file)
	}
	// The token comes from a Secret, through an environment variable.
	tok, _ := get(v, "config", "merge", "authorization", "token").(string)
	m := regexp.MustCompile(`^<< \$([A-Z_][A-Z0-9_]*) >>$`).FindStringSubmatch(tok)
	if m == nil {
		p.add("%s: config.merge.authorization.token is %q; want << $VAR >> with VAR from a Secret", file, tok)
	} else {
		ref, _ := get(v, "container", "env", m[1], "valueFrom", "secretKeyRef").(map[string]any)
		name, _ := ref["name"].(string)
		key, _ := ref["key"].(string)
		if !slices.Contains(secrets[name], key) {
			p.add("%s: container.env.%s must come from a secretKeyRef to a shipped Secret in the NATS namespace (got %v)", file, m[1], ref)
		}
	}
	im := helmInstall.FindStringSubmatch(string(data))
	if im == nil {
		p.add("%s: the header must show the helm upgrade --install command (release and namespace)", file)
		return inst, p
	}
	// nats.fullname: the release name if it contains the chart name.
	svc := im[1]
	if !strings.Contains(svc, "nats") {
		svc += "-nats"
	}
	inst.Host = svc + "." + im[2] + ".svc.cluster.local"
	return inst, p
}

// secretsIn returns the keys of each Secret in a file, optionally only those
// of one namespace.
func secretsIn(file, namespace string) (map[string][]string, error) {
	objs, err := loadManifests(file)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, o := range objs {
		s, ok := o.Obj.(*corev1.Secret)
		if !ok {
			return nil, fmt.Errorf("%s: %s is not a Secret", file, o)
		}
		if namespace != "" && s.Namespace != namespace {
			continue
		}
		for k := range s.StringData {
			out[s.Name] = append(out[s.Name], k)
		}
		for k := range s.Data {
			out[s.Name] = append(out[s.Name], k)
		}
	}
	return out, nil
}

// goModVersion is the go line of go.mod.
func goModVersion() (string, error) {
	data, err := os.ReadFile(repoPath("go.mod"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("go.mod has no go line")
	}
	return string(m[1]), nil
}
