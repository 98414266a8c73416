package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
)

// names lists every metric the collector makes, for Names.
var names []string

func desc(name, help string, labels ...string) *prometheus.Desc {
	fq := prometheus.BuildFQName(Namespace, "", name)
	names = append(names, fq)
	return prometheus.NewDesc(fq, help, append([]string{"instance", "daprd"}, labels...), nil)
}

// Names lists the metrics of the component, without Go's and the process's:
// what a dashboard or an alert may query.
func Names() []string {
	return append([]string{prometheus.BuildFQName(Namespace, "", pubAckName)}, names...)
}

// What an instance reports at each scrape, read from its Stats.
var (
	connState   = desc("connection_state", "1 for the state the NATS connection is in: connected, reconnecting or closed.", "state")
	reconnects  = desc("reconnects_total", "Reconnections to NATS.")
	disconnects = desc("disconnects_total", "Lost NATS connections, by the kind of error.", "kind")
	serverInfo  = desc("server_info", "1, with the version of the NATS server the instance is connected to.", "version")

	published  = desc("publish_total", "Publishes, by outcome: ok, duplicate, no_stream, timeout, expected_mismatch, invalid or error.", "topic", "outcome")
	bulkFailed = desc("bulk_entries_failed_total", "BulkPublish entries that were not stored.", "topic")

	subLabels     = []string{"topic", "consumer"}
	held          = desc("held_messages", "Messages the component holds for daprd and that are not yet settled: delivered to it, waiting for it, or left by an ended subscription for the next one.", subLabels...)
	maxInFlight   = desc("max_in_flight", "The maxInFlight limit of the topic's subscriptions.", subLabels...)
	oldestHeld    = desc("oldest_held_seconds", "Age of the oldest message held.", subLabels...)
	deliveries    = desc("deliveries_total", "Messages JetStream delivered to the component.", subLabels...)
	redeliveries  = desc("redeliveries_total", "Deliveries of messages delivered before (NumDelivered > 1).", subLabels...)
	acks          = desc("acks_total", "Messages acknowledged.", subLabels...)
	naks          = desc("naks_total", "Messages the app failed, given back for redelivery.", subLabels...)
	terms         = desc("terms_total", "Messages terminated after their dead letter was stored.", subLabels...)
	inProgress    = desc("in_progress_total", "InProgress acknowledgements sent for messages held long.", subLabels...)
	ackedAgain    = desc("acked_again_total", "Redeliveries of messages the instance had already acknowledged for the app (JetStream lost the ack), acknowledged again without the app.", subLabels...)
	pending       = desc("consumer_pending_messages", "The consumer's num_pending: messages not yet delivered. Only while a subscription is open.", subLabels...)
	ackPending    = desc("consumer_ack_pending_messages", "The consumer's num_ack_pending: delivered and not yet acknowledged. Only while a subscription is open.", subLabels...)
	subscriptions = desc("subscriptions", "Subscriptions open to the topic with the consumer.", subLabels...)
	givenBack     = desc("given_back_total", "Messages the app had not seen, given back to JetStream, by reason: pause, stream_end or shutdown.", "topic", "reason")
)

var states = []string{"connected", "reconnecting", "closed"}

type collector struct{ m *Metrics }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connState, reconnects, disconnects, serverInfo, published, bulkFailed, held, maxInFlight,
		oldestHeld, deliveries, redeliveries, acks, naks, terms, inProgress, ackedAgain, pending, ackPending, subscriptions, givenBack} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, in := range c.m.instances() {
		if in.NotServing == "" {
			collectInstance(ch, in)
		}
	}
}

func collectInstance(ch chan<- prometheus.Metric, in Instance) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{in.Name, in.Daprd}, labels...)...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{in.Name, in.Daprd}, labels...)...)
	}
	conn := in.Stats.Connection
	for _, s := range states {
		v := 0.0
		if conn.State == s {
			v = 1
		}
		gauge(connState, v, s)
	}
	counter(reconnects, conn.Reconnects)
	for kind, n := range conn.Disconnects {
		counter(disconnects, n, kind)
	}
	if conn.ServerVersion != "" {
		gauge(serverInfo, 1, conn.ServerVersion)
	}
	for _, p := range in.Stats.Publish {
		for outcome, n := range p.Outcomes {
			counter(published, n, p.Topic, outcome)
		}
		counter(bulkFailed, p.BulkEntriesFailed, p.Topic)
	}
	for _, s := range in.Stats.Subscriptions {
		collectSubscription(gauge, counter, s)
	}
	for _, g := range in.Stats.GivenBack {
		counter(givenBack, g.Count, g.Topic, g.Reason)
	}
}

func collectSubscription(gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string), s jetstream.SubscriptionStats) {
	l := []string{s.Topic, s.Consumer}
	gauge(subscriptions, float64(s.Live), l...)
	gauge(held, float64(s.Held), l...)
	gauge(maxInFlight, float64(s.MaxInFlight), l...)
	gauge(oldestHeld, s.OldestHeld.Seconds(), l...)
	// Without a live subscription nothing here reads the consumer's info,
	// and another replica may drain it meanwhile: a figure kept from
	// before would pass for the current one.
	if s.ConsumerKnown {
		gauge(pending, float64(s.NumPending), l...)
		gauge(ackPending, float64(s.NumAckPending), l...)
	}
	counter(deliveries, s.Deliveries, l...)
	counter(redeliveries, s.Redeliveries, l...)
	counter(acks, s.Acks, l...)
	counter(naks, s.Naks, l...)
	counter(terms, s.Terms, l...)
	counter(inProgress, s.InProgress, l...)
	counter(ackedAgain, s.AckedAgain, l...)
}
