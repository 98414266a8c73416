package main

import (
	"fmt"
	"html"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

var selfPid = os.Getpid()

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", ms(d))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", ms(d))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func fmtMB(b int64) string {
	if b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/(1<<20))
}

func count(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return strconv.Itoa(n/1000000) + "M"
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

func fmtRate(r float64) string {
	switch {
	case r <= 0:
		return "—"
	case r >= 100:
		return strconv.FormatFloat(r, 'f', 0, 64)
	default:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
}

func trimFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func fmtCPU(v *variant) string {
	if !v.measured() {
		return "—"
	}
	src := map[string]string{"component": " (c)", "bench": " (b)", "daprd": " (d)"}[v.cpuSrc]
	return fmt.Sprintf("%.2f%s", v.cpu(), src)
}

// cells is one table row.
func cells(c *comparison, v *variant, first bool) []string {
	p50, p99 := "—", "—"
	if !v.noLatency {
		p50, p99 = fmtDur(v.p(50)), fmtDur(v.p(99))
	}
	row := []string{v.label, fmtRate(v.rate()), p50, p99, fmtCPU(v), fmt.Sprintf("%.2f", v.nats()), fmtMB(v.rss())}
	if !v.measured() {
		row = []string{v.label, "—", "—", "—", "—", "—", "—"}
	}
	if first {
		res := "MISS"
		if c.pass() {
			res = "PASS"
		}
		row = append(row, ratioText(c), c.targetText(), res)
	} else {
		row = append(row, "", "", "")
	}
	return row
}

// ratioText is the median ratio, and for a merge of runs the lowest and
// highest per-round ratio of all of them.
func ratioText(c *comparison) string {
	if !c.merged() {
		return fmt.Sprintf("%.2f", c.ratio())
	}
	lo, hi := c.spread()
	return fmt.Sprintf("%.2f (%.2f–%.2f)", c.ratio(), lo, hi)
}

// report is what the outputs show: the comparisons, merged over the runs.
type report struct {
	meta string
	runs int
	cs   []*comparison
}

// pair returns the first comparison of a pair that ran, or nil.
func (r report) pair(id string) *comparison {
	for _, c := range r.cs {
		if c.pair == id && c.notRun == "" {
			return c
		}
	}
	return nil
}

// Legends printed under the table.
const (
	cpuLegend = "CPU: (c) the component process (/proc utime+stime), (b) the bench process itself (getrusage), (d) daprd plus, for ours, the component (/proc)."
	rssLegend = "RSS: VmRSS of the component for ours, of the bench process for raw nats.go; for pair 6, daprd plus (for ours) the component."
)

// runsLegend explains the figures of a merge of runs.
func (r report) runsLegend() string {
	if r.runs <= 1 {
		return ""
	}
	return fmt.Sprintf("Runs: every figure is the median over the %d runs of that run's figure (the median over its rounds); "+
		"the ratio column gives the median ratio, and in brackets the lowest and highest per-round ratio of all runs; "+
		"PASS and MISS are judged on the median ratio.", r.runs)
}

var header = []string{"variant", "msgs/s", "p50", "p99", "CPU s/100k msgs", "nats-server CPU s/100k", "RSS", "ratio", "target", "result"}

// printTable writes the plain-text table.
func printTable(w io.Writer, rep report) {
	cs := rep.cs
	rows := [][]string{header}
	var titles = map[int]string{}
	for _, c := range cs {
		titles[len(rows)] = fmt.Sprintf("Pair %s — %s", c.pair, c.title)
		if c.notRun != "" {
			rows = append(rows, []string{"not run: " + c.notRun, "", "", "", "", "", "", "", c.targetText(), "NOT RUN"})
			continue
		}
		rows = append(rows, cells(c, c.ours, true))
		for _, b := range c.base {
			rows = append(rows, cells(c, b, false))
		}
	}
	width := make([]int, len(header))
	for _, r := range rows {
		for i, cell := range r {
			if i == 0 && strings.HasPrefix(cell, "not run: ") {
				continue
			}
			width[i] = max(width[i], len([]rune(cell)))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		for i, cell := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := width[i] - len([]rune(cell))
			if i == 0 {
				b.WriteString(cell + strings.Repeat(" ", max(pad, 0)))
			} else {
				b.WriteString(strings.Repeat(" ", max(pad, 0)) + cell)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	for i, r := range rows {
		if t, ok := titles[i]; ok {
			fmt.Fprintln(w)
			fmt.Fprintln(w, t)
		}
		if strings.HasPrefix(r[0], "not run: ") {
			fmt.Fprintf(w, "%s (target %s)  NOT RUN\n", r[0], r[8])
			continue
		}
		line(r)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, cpuLegend)
	if l := rep.runsLegend(); l != "" {
		fmt.Fprintln(w, l)
	}
	for _, c := range cs {
		if c.notRun != "" {
			continue
		}
		fmt.Fprintf(w, "Pair %s (%s): ratio = %s.%s\n", c.pair, c.title, c.explain, notes(c, rep))
	}
}

// writeMarkdown writes the same table as Markdown.
func writeMarkdown(path string, rep report) error {
	cs := rep.cs
	var b strings.Builder
	b.WriteString("# dapr-nats-jetstream benchmark\n\n")
	b.WriteString(rep.meta + "\n\n")
	b.WriteString("| pair | " + strings.Join(header, " | ") + " |\n")
	b.WriteString("|---|" + strings.Repeat("---|", len(header)) + "\n")
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, c := range cs {
		name := fmt.Sprintf("%s. %s", c.pair, c.title)
		if c.notRun != "" {
			fmt.Fprintf(&b, "| %s | not run: %s |  |  |  |  |  |  |  | %s | NOT RUN |\n", esc(name), esc(c.notRun), c.targetText())
			continue
		}
		rows := [][]string{cells(c, c.ours, true)}
		for _, v := range c.base {
			rows = append(rows, cells(c, v, false))
		}
		for i, r := range rows {
			first := name
			if i > 0 {
				first = ""
			}
			for j := range r {
				r[j] = esc(r[j])
			}
			if i == 0 {
				r[len(r)-1] = "**" + r[len(r)-1] + "**"
			}
			fmt.Fprintf(&b, "| %s | %s |\n", esc(first), strings.Join(r, " | "))
		}
	}
	b.WriteString("\n" + cpuLegend + " " + rssLegend + "\n\n")
	if l := rep.runsLegend(); l != "" {
		b.WriteString(l + "\n\n")
	}
	for _, c := range cs {
		if c.notRun != "" {
			fmt.Fprintf(&b, "- **Pair %s** not run: %s\n", c.pair, c.notRun)
			continue
		}
		fmt.Fprintf(&b, "- **Pair %s** (%s): ratio = %s.%s Per-round ratios: %s.\n", c.pair, c.title, c.explain, notes(c, rep), roundRatios(c))
	}
	b.WriteString("\n![ratio vs target](bench-ratios.svg)\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// notes are the facts printed under the table for a comparison.
func notes(c *comparison, rep report) string {
	var s string
	if n := runsNote(c, rep.runs); n != "" {
		s += " " + n
	}
	if c.detail != nil {
		s += " " + c.detail(c) + "."
	}
	if c.passExtra != nil {
		_, why := c.passExtra(c)
		s += " " + why + "."
	}
	if c.ours != nil && c.ours.cpuSrc == "daprd" && c.ours.measured() {
		s += fmt.Sprintf(" CPU s/100k msgs: ours = daprd %.2f + component %.2f; built-in = daprd %.2f.",
			c.ours.part(daprdPart), c.ours.part(componentPart), c.base[0].part(daprdPart))
	}
	if c.deliveredCPU != "" && c.ours.measured() {
		s += " " + deliveredCPUNote(c, rep.pair("4")) + "."
	}
	if c.ours != nil && c.ours.cpuSrc == "component" && c.ours.client() > 0 {
		s += fmt.Sprintf(" The daprd client side (this bench process) used %.2f CPU s/100k msgs during ours.", c.ours.client())
	}
	return s
}

// deliveredCPUNote gives the component's CPU per message delivered through
// daprd, and relates it to pair 4, where the same component delivers a
// backlog straight to daprd's client: the aim is at most twice pair 4's.
func deliveredCPUNote(c, pair4 *comparison) string {
	us := usPerMsg(c.ours.part(componentPart))
	s := fmt.Sprintf("%s: %s", c.deliveredCPU, fmtMicros(us))
	if pair4 == nil || !pair4.ours.measured() {
		return s + " (pair 4 did not run)"
	}
	us4 := usPerMsg(pair4.ours.cpu())
	if us4 <= 0 {
		return s + " (pair 4: no CPU measured)"
	}
	return s + fmt.Sprintf(" (pair 4: %s; ratio %.1f×)", fmtMicros(us4), us/us4)
}

func fmtMicros(us float64) string {
	if us < 10 {
		return fmt.Sprintf("%.1f µs", us)
	}
	return fmt.Sprintf("%.0f µs", us)
}

// roundRatios lists the per-round ratios, by run for a merge of runs.
func roundRatios(c *comparison) string {
	if !c.merged() {
		return fmtRatios(c.ratios)
	}
	runs := make([]string, len(c.runRatios))
	for i, rs := range c.runRatios {
		runs[i] = fmt.Sprintf("run %d: %s", c.runNumbers[i], fmtRatios(rs))
	}
	return strings.Join(runs, "; ")
}

func fmtRatios(r []float64) string {
	s := make([]string, len(r))
	for i, v := range r {
		s[i] = fmt.Sprintf("%.2f", v)
	}
	return strings.Join(s, ", ")
}

// writeSVG draws one horizontal bar per comparison: the measured ratio, with
// a mark at the target; green when it passes, red when it misses. For a
// merge of runs, a whisker spans the lowest to the highest per-round ratio.
func writeSVG(path string, rep report) error {
	cs := rep.cs
	const (
		labelW = 430
		barW   = 420
		rowH   = 30
		top    = 50
	)
	var run []*comparison
	scale := 1.5
	for _, c := range cs {
		if c.notRun != "" || len(c.ratios) == 0 {
			continue
		}
		run = append(run, c)
		scale = max(scale, c.ratio()*1.05, c.target*1.2)
		if c.merged() {
			_, hi := c.spread()
			scale = max(scale, hi*1.05)
		}
	}
	scale = min(scale, 4)
	h := top + rowH*len(run) + 40
	textW := 170
	if rep.runs > 1 {
		textW = 240 // the ratio text carries its spread
	}
	w := labelW + barW + textW
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := "dapr-nats-jetstream: ratio vs target per pair (medians; black mark = target)"
	if rep.runs > 1 {
		title = fmt.Sprintf("dapr-nats-jetstream: ratio vs target per pair (medians over %d runs; whisker = per-round min–max; black mark = target)", rep.runs)
	}
	fmt.Fprintf(&b, `<text x="10" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	x0 := labelW
	for _, t := range []float64{0, 0.5, 1, 1.5, 2, 3, 4} {
		if t > scale {
			break
		}
		x := x0 + int(t/scale*barW)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ddd"/>`+"\n", x, top-8, x, h-30)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#666">%s</text>`+"\n", x, h-14, trimFloat(t))
	}
	barX := func(ratio float64) int { return x0 + int(min(ratio, scale)/scale*barW) }
	for i, c := range run {
		y := top + i*rowH
		color := "#2e7d32"
		res := "PASS"
		if !c.pass() {
			color, res = "#c62828", "MISS"
		}
		label := fmt.Sprintf("%s. %s", c.pair, c.title)
		if len([]rune(label)) > 66 {
			label = string([]rune(label)[:65]) + "…"
		}
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+15, html.EscapeString(label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x0, y+3, max(barX(c.ratio())-x0, 1), rowH-10, color)
		if c.merged() {
			writeWhisker(&b, barX, c, y+3+(rowH-10)/2)
		}
		tx := barX(c.target)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black" stroke-width="3"/>`+"\n", tx, y, tx, y+rowH-4)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (%s) %s</text>`+"\n", x0+barW+10, y+15, html.EscapeString(ratioText(c)), html.EscapeString(c.targetText()), res)
	}
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// writeWhisker draws the spread of a comparison's per-round ratios as a
// horizontal line with end caps, centred on y.
func writeWhisker(b *strings.Builder, barX func(float64) int, c *comparison, y int) {
	lo, hi := c.spread()
	x1, x2 := barX(lo), barX(hi)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1.5"/>`+"\n", x1, y, x2, y)
	for _, x := range []int{x1, x2} {
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1.5"/>`+"\n", x, y-5, x, y+5)
	}
}
