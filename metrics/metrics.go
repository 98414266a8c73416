// Package metrics serves what daprd cannot see behind the component's socket
// as Prometheus metrics, with health endpoints for probes: the connection to
// NATS, publishes and their PubAck latency, and each subscription's consumer.
// daprd's own dapr_component_pubsub_* metrics already count what crosses the
// socket, so nothing here repeats them.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
)

// Namespace prefixes every metric of the component.
const Namespace = "jetstream_pubsub"

const pubAckName = "puback_seconds"

// Instance is one component instance: a Component name, the daprd it
// serves (its process id, "0" when unknown), and what it does.
type Instance struct {
	Name  string
	Daprd string
	Stats jetstream.Stats
	// NotServing says why every call of the daprd to this Component fails,
	// when they do: this process never initialised it. Such an instance has
	// no Stats.
	NotServing string
}

// Source lists the instances at the time of a scrape.
type Source func() []Instance

// Metrics collects the component's metrics into its own registry.
type Metrics struct {
	reg    *prometheus.Registry
	pubAck *prometheus.HistogramVec

	mu     sync.Mutex
	source Source
}

// New returns Metrics with Go's and the process's default collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		pubAck: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: pubAckName,
			Help:    "Time from sending a message to NATS until its PubAck arrived (or the publish failed).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"instance", "daprd", "topic", "outcome"}),
	}
	m.reg.MustRegister(m.pubAck, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &collector{m: m})
	return m
}

// SetSource sets where the instances come from.
func (m *Metrics) SetSource(s Source) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.source = s
}

func (m *Metrics) instances() []Instance {
	m.mu.Lock()
	s := m.source
	m.mu.Unlock()
	if s == nil {
		return nil
	}
	return s()
}

// Publishes returns the observer of one instance's publishes, which records
// their PubAck latency.
func (m *Metrics) Publishes(instance, daprd string) jetstream.PublishObserver {
	return func(topic string, took time.Duration, outcome string) {
		m.pubAck.WithLabelValues(instance, daprd, topic, outcome).Observe(took.Seconds())
	}
}

// Forget removes the series of an instance closed for good (its daprd
// exited): the collector's go with the instance, and this removes the
// PubAck latency histogram's, which would otherwise stay for the life of
// the process.
func (m *Metrics) Forget(instance, daprd string) {
	m.pubAck.DeletePartialMatch(prometheus.Labels{"instance": instance, "daprd": daprd})
}

// Registry is where the metrics are registered, for tests and embedding.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }
