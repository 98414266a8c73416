package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// mergeRuns turns the results of each run of the suite into one list: a
// comparison that ran in several runs becomes one whose figures are the
// median over those runs (see variant and comparison), and one that did not
// run keeps its reasons, with the run they belong to when they differ. A
// pair that failed in one run has another title there (that of the pair, not
// of its rows), so it shows as a row of its own.
func mergeRuns(runs [][]*comparison) []*comparison {
	switch len(runs) {
	case 0:
		return nil
	case 1:
		return runs[0]
	}
	type group struct {
		ran    []*comparison
		ranIn  []int
		notRun []string
		first  *comparison
	}
	var order []string
	groups := map[string]*group{}
	for i, cs := range runs {
		for _, c := range cs {
			key := c.pair + "\x00" + c.title
			g, ok := groups[key]
			if !ok {
				g = &group{first: c}
				groups[key] = g
				order = append(order, key)
			}
			if c.notRun != "" {
				g.notRun = append(g.notRun, fmt.Sprintf("run %d: %s", i+1, c.notRun))
				continue
			}
			g.ran = append(g.ran, c)
			g.ranIn = append(g.ranIn, i+1)
		}
	}
	var out []*comparison
	for _, key := range order {
		g := groups[key]
		if len(g.notRun) > 0 {
			out = append(out, notRunInRuns(g.first, g.notRun, len(runs)))
		}
		if len(g.ran) > 0 {
			out = append(out, mergeComparison(g.ran, g.ranIn))
		}
	}
	slices.SortStableFunc(out, func(x, y *comparison) int { return strings.Compare(x.pair, y.pair) })
	return out
}

// notRunInRuns is the row of a comparison that did not run in some runs.
// When it never ran, for the same reason every time, the reason is given
// once, as for a single run.
func notRunInRuns(c *comparison, reasons []string, runs int) *comparison {
	why := strings.Join(reasons, "; ")
	if len(reasons) == runs && sameReason(reasons) {
		why = c.notRun
	}
	return &comparison{pair: c.pair, title: c.title, target: c.target, atMost: c.atMost, notRun: why}
}

// sameReason says whether "run N: why" reasons all give the same why.
func sameReason(reasons []string) bool {
	why := func(r string) string { _, w, _ := strings.Cut(r, ": "); return w }
	for _, r := range reasons[1:] {
		if why(r) != why(reasons[0]) {
			return false
		}
	}
	return true
}

// mergeComparison merges one comparison's results from the runs numbered
// runNumbers: the same pair and title, so the same variants in the same
// order.
func mergeComparison(cs []*comparison, runNumbers []int) *comparison {
	m := *cs[0]
	m.ratios, m.runRatios, m.runNumbers = nil, nil, runNumbers
	for _, c := range cs {
		m.ratios = append(m.ratios, c.ratios...)
		m.runRatios = append(m.runRatios, c.ratios)
	}
	m.ours = mergeVariant(cs, func(c *comparison) *variant { return c.ours })
	m.base = make([]*variant, len(cs[0].base))
	for i := range m.base {
		m.base[i] = mergeVariant(cs, func(c *comparison) *variant { return c.base[i] })
	}
	return &m
}

func mergeVariant(cs []*comparison, side func(*comparison) *variant) *variant {
	v := *side(cs[0])
	v.samples, v.runs = nil, nil
	for _, c := range cs {
		rounds := side(c).samples
		v.samples = append(v.samples, rounds...)
		v.runs = append(v.runs, rounds)
	}
	return &v
}

// runsNote says which runs a merged comparison comes from, when not all.
func runsNote(c *comparison, runs int) string {
	if c.runNumbers == nil || len(c.runNumbers) == runs {
		return ""
	}
	nums := make([]string, len(c.runNumbers))
	for i, n := range c.runNumbers {
		nums[i] = strconv.Itoa(n)
	}
	return fmt.Sprintf("Medians over %d of the %d runs (run %s).", len(nums), runs, strings.Join(nums, ", "))
}
