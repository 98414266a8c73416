package deploy

import (
	"fmt"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// The Prometheus annotations that the common kubernetes-pods scrape job
// reads. Dapr's operator puts its own set, for daprd's 9090, on the
// <app>-dapr Service (pkg/operator/handlers/dapr_handler.go), so the pod's
// set is free for the component.
const (
	promScrape = "prometheus.io/scrape"
	promPort   = "prometheus.io/port"
	promPath   = "prometheus.io/path"
)

// probePaths are the metrics endpoints each probe may use. Liveness on
// /readyz would restart the container whenever NATS is away, which fixes
// nothing and gives back every held message.
var probePaths = map[string]string{
	"startupProbe":   "/healthz",
	"livenessProbe":  "/healthz",
	"readinessProbe": "/readyz",
}

// metricsPort returns the TCP port of the container's -metrics-addr (or
// JETSTREAM_METRICS_ADDR); 0 when metrics are off.
func metricsPort(c *corev1.Container, e env) (int32, error) {
	args, err := parseArgs(c.Args, e.Flags)
	if err != nil {
		return 0, err
	}
	addr, ok := args["metrics-addr"]
	if !ok {
		if !e.Envs["JETSTREAM_METRICS_ADDR"] {
			return 0, fmt.Errorf("main.go no longer reads JETSTREAM_METRICS_ADDR")
		}
		if addr, _, err = containerEnv(c, "JETSTREAM_METRICS_ADDR"); err != nil {
			return 0, err
		}
	}
	if addr == "" {
		return 0, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("-metrics-addr %q: %v; use a port such as :9095", addr, err)
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		return 0, fmt.Errorf("-metrics-addr %q listens on %s only, where neither the kubelet's probes nor Prometheus reach it; use :%s", addr, host, port)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("-metrics-addr %q: port %q is not a number from 1 to 65535", addr, port)
	}
	return int32(n), nil
}

// checkProbe checks one probe of the component container: either the
// healthcheck subcommand (exec) or an httpGet on the metrics address.
func checkProbe(p *problems, where, name string, pr *corev1.Probe, c *corev1.Container, sock socketOf, e env, port int32) {
	if pr.HTTPGet == nil {
		checkExec(p, where+" "+name, pr.Exec, c, sock, e)
		return
	}
	where += " " + name
	get := pr.HTTPGet
	if port == 0 {
		p.add("%s is an httpGet, but metrics are off: set -metrics-addr (such as :9095), which serves /healthz and /readyz", where)
		return
	}
	target := get.Port.IntVal
	if get.Port.StrVal != "" {
		target = 0
		for _, cp := range c.Ports {
			if cp.Name == get.Port.StrVal {
				target = cp.ContainerPort
			}
		}
		if target == 0 {
			p.add("%s names port %q, which container %s does not declare", where, get.Port.StrVal, c.Name)
			return
		}
	}
	if target != port {
		p.add("%s gets port %d but -metrics-addr serves on %d", where, target, port)
	}
	if want := probePaths[name]; get.Path != want {
		p.add("%s gets %q; want %q (/healthz: the process is alive; /readyz: NATS connected and no subscription stuck)", where, get.Path, want)
	}
	if get.Scheme != "" && get.Scheme != corev1.URISchemeHTTP {
		p.add("%s uses scheme %s; the metrics address serves plain HTTP", where, get.Scheme)
	}
}

// checkScrape checks that Prometheus can find the component's metrics: the
// port is declared, clashes with no other container (daprd's metrics are on
// 9090), and the pod's prometheus.io annotations point at it.
func checkScrape(p *problems, where string, c *corev1.Container, pod *corev1.Pod, port int32) {
	if port == 0 {
		p.add("%s: metrics are off; set -metrics-addr=:9095 so that probes and Prometheus can reach /readyz and /metrics", where)
		return
	}
	declared := false
	for _, cp := range c.Ports {
		declared = declared || cp.ContainerPort == port
	}
	if !declared {
		p.add("%s: -metrics-addr serves on %d, but the container declares no containerPort %d (a PodMonitor selects it by name)", where, port, port)
	}
	for _, other := range pod.Spec.Containers {
		if other.Name == c.Name {
			continue
		}
		for _, cp := range other.Ports {
			if cp.ContainerPort == port {
				p.add("%s: -metrics-addr port %d clashes with container %s's port %s; pick another, such as 9095", where, port, other.Name, cp.Name)
			}
		}
	}
	an := pod.Annotations
	if an[promScrape] != "true" {
		p.add("%s: wants the pod annotation %s: \"true\" so that Prometheus scrapes the component", where, promScrape)
	}
	if an[promPort] != strconv.Itoa(int(port)) {
		p.add("%s: pod annotation %s is %q but -metrics-addr serves on %d", where, promPort, an[promPort], port)
	}
	if path, ok := an[promPath]; ok && path != "/metrics" {
		p.add("%s: pod annotation %s is %q; the component serves /metrics", where, promPath, path)
	}
}
