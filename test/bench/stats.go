package main

import (
	"slices"
	"time"
)

// sample is one measurement of one variant.
type sample struct {
	msgs    int
	elapsed time.Duration
	lat     []time.Duration // per message (or per call), when meaningful
	cpu     float64         // CPU seconds of the measured side (see cpuSrc)
	natsCPU float64         // CPU seconds of nats-server
	rss     int64           // bytes, at the end of the measurement
	// clientCPU is this process's CPU while measuring ours: daprd's client.
	clientCPU float64
	// parts is the CPU of each measured process, in the meter's order.
	parts []float64
}

func (s sample) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.msgs) / s.elapsed.Seconds()
}

func (s sample) perMsg() time.Duration {
	if s.msgs == 0 {
		return 0
	}
	return s.elapsed / time.Duration(s.msgs)
}

func (s sample) cpuPer100k() float64 {
	if s.msgs == 0 {
		return 0
	}
	return s.cpu * 100000 / float64(s.msgs)
}

func (s sample) clientPer100k() float64 {
	if s.msgs == 0 {
		return 0
	}
	return s.clientCPU * 100000 / float64(s.msgs)
}

func (s sample) natsPer100k() float64 {
	if s.msgs == 0 {
		return 0
	}
	return s.natsCPU * 100000 / float64(s.msgs)
}

// percentile of sorted latencies (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDur(v []time.Duration) time.Duration {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = float64(d)
	}
	return time.Duration(median(f))
}

// variant is the per-round samples of one side of a pair, and their medians.
type variant struct {
	label   string
	cpuSrc  string // "component", "bench" or ""
	samples []sample
	// noLatency hides p50/p99 (backlog drains, where they mean nothing).
	noLatency bool
}

func (v *variant) add(s sample) { v.samples = append(v.samples, s) }

func (v *variant) med(f func(sample) float64) float64 {
	vals := make([]float64, 0, len(v.samples))
	for _, s := range v.samples {
		vals = append(vals, f(s))
	}
	return median(vals)
}

func (v *variant) rate() float64 { return v.med(sample.rate) }
func (v *variant) perMsg() time.Duration {
	return time.Duration(v.med(func(s sample) float64 { return float64(s.perMsg()) }))
}
func (v *variant) cpu() float64    { return v.med(sample.cpuPer100k) }
func (v *variant) nats() float64   { return v.med(sample.natsPer100k) }
func (v *variant) client() float64 { return v.med(sample.clientPer100k) }

// part is the median CPU s/100k msgs of the ith measured process.
func (v *variant) part(i int) float64 {
	return v.med(func(s sample) float64 {
		if i >= len(s.parts) || s.msgs == 0 {
			return 0
		}
		return s.parts[i] * 100000 / float64(s.msgs)
	})
}
func (v *variant) rss() int64 {
	return int64(v.med(func(s sample) float64 { return float64(s.rss) }))
}

// p returns the median over rounds of the round's pth percentile.
func (v *variant) p(p float64) time.Duration {
	var ds []time.Duration
	for _, s := range v.samples {
		if len(s.lat) > 0 {
			ds = append(ds, percentile(sortedCopy(s.lat), p))
		}
	}
	if len(ds) == 0 {
		return 0
	}
	return medianDur(ds)
}

// comparison is one row of results: ours against a baseline, with the
// target the ratio must meet.
type comparison struct {
	pair    string
	title   string
	ours    *variant
	base    []*variant // the baseline, and helpers such as the bare hop
	ratios  []float64  // per round; the reported ratio is their median
	target  float64
	atMost  bool   // the ratio must be <= target (else >=)
	explain string // how the ratio is computed
	detail  string // extra facts printed under the table
	notRun  string // why the pair did not run
	// passExtra, if set, must also hold for PASS.
	passExtra func() (bool, string)
}

func (c *comparison) ratio() float64 { return median(c.ratios) }

func (c *comparison) pass() bool {
	if c.notRun != "" || len(c.ratios) == 0 {
		return false
	}
	r := c.ratio()
	ok := r >= c.target
	if c.atMost {
		ok = r <= c.target
	}
	if c.passExtra != nil {
		extra, _ := c.passExtra()
		ok = ok && extra
	}
	return ok
}

func (c *comparison) targetText() string {
	op := "≥"
	if c.atMost {
		op = "≤"
	}
	return op + " " + trimFloat(c.target)
}
