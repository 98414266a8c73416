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
	// peakRSS is VmHWM in bytes, where a pair records it (pair 7).
	peakRSS int64
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

// variant is the per-round samples of one side of a pair, and their medians.
// A variant merged from several runs (see mergeRuns) keeps every round in
// samples and the rounds of each run in runs; its figures are the median
// over the runs of each run's median, so that one disturbed run moves a
// figure no more than one disturbed round moves a run.
type variant struct {
	label   string
	cpuSrc  string // "component", "bench" or ""
	samples []sample
	// noLatency hides p50/p99 (backlog drains, where they mean nothing).
	noLatency bool
	runs      [][]sample // nil for a single run: then samples is its rounds
}

func (v *variant) add(s sample) { v.samples = append(v.samples, s) }

func (v *variant) measured() bool { return len(v.samples) > 0 }

func (v *variant) roundsByRun() [][]sample {
	if v.runs != nil {
		return v.runs
	}
	return [][]sample{v.samples}
}

// overRuns is the median over runs of perRun, the figure of one run's
// rounds; runs for which perRun has no figure are left out.
func (v *variant) overRuns(perRun func(rounds []sample) (float64, bool)) float64 {
	var figures []float64
	for _, rounds := range v.roundsByRun() {
		if f, ok := perRun(rounds); ok {
			figures = append(figures, f)
		}
	}
	return median(figures)
}

// med is the median over rounds of f (over runs, of those medians).
func (v *variant) med(f func(sample) float64) float64 {
	return v.overRuns(func(rounds []sample) (float64, bool) {
		vals := make([]float64, 0, len(rounds))
		for _, s := range rounds {
			vals = append(vals, f(s))
		}
		return median(vals), len(vals) > 0
	})
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
func (v *variant) peakRSS() int64 {
	return int64(v.med(func(s sample) float64 { return float64(s.peakRSS) }))
}

// p returns the median over rounds of the round's pth percentile.
func (v *variant) p(p float64) time.Duration {
	return time.Duration(v.overRuns(func(rounds []sample) (float64, bool) {
		var ds []float64
		for _, s := range rounds {
			if len(s.lat) > 0 {
				ds = append(ds, float64(percentile(sortedCopy(s.lat), p)))
			}
		}
		return median(ds), len(ds) > 0
	}))
}

// usPerMsg converts CPU seconds per 100k messages to µs per message.
func usPerMsg(cpuPer100k float64) float64 { return cpuPer100k * 1e6 / 100000 }

// comparison is one row of results: ours against a baseline, with the
// target the ratio must meet. Merged from several runs, ratios holds every
// round's ratio and runRatios those of each run, numbered by runNumbers.
type comparison struct {
	pair    string
	title   string
	ours    *variant
	base    []*variant // the baseline, and helpers such as the bare hop
	ratios  []float64  // per round; the reported ratio is their median
	target  float64
	atMost  bool   // the ratio must be <= target (else >=)
	explain string // how the ratio is computed
	// detail gives extra facts printed under the table, computed from the
	// comparison's figures so that it also describes a merge of runs.
	detail func(c *comparison) string
	notRun string // why the pair did not run
	// passExtra, if set, must also hold for PASS.
	passExtra func(c *comparison) (bool, string)
	// deliveredCPU, if set, names the component's CPU per message delivered
	// to the app (ours' second measured process), which the notes give
	// against pair 4's component CPU per delivered message.
	deliveredCPU string

	runRatios  [][]float64 // nil for a single run
	runNumbers []int       // 1-based, aligned with runRatios
}

func (c *comparison) ratiosByRun() [][]float64 {
	if c.runRatios != nil {
		return c.runRatios
	}
	return [][]float64{c.ratios}
}

// ratio is the median of the per-round ratios (over runs, of those medians).
func (c *comparison) ratio() float64 {
	perRun := make([]float64, 0, len(c.ratiosByRun()))
	for _, rs := range c.ratiosByRun() {
		if len(rs) > 0 {
			perRun = append(perRun, median(rs))
		}
	}
	return median(perRun)
}

// spread is the lowest and highest per-round ratio over all runs.
func (c *comparison) spread() (lo, hi float64) {
	if len(c.ratios) == 0 {
		return 0, 0
	}
	return slices.Min(c.ratios), slices.Max(c.ratios)
}

// merged says whether the comparison comes from mergeRuns, its figures
// medians over runs.
func (c *comparison) merged() bool { return c.runRatios != nil }

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
		extra, _ := c.passExtra(c)
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
