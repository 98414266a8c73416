// Command bench measures the component against raw nats.go (and, when a
// daprd binary is available, against daprd's built-in pubsub.jetstream), with
// nats-server, the component and daprd as separate processes so that their
// CPU and memory can be read from /proc. It is run by `make bench`, not by
// `make test`.
//
//	go run ./test/bench [-quick] [-runs N] [-out DIR] [-pairs 1,2,3,4,5,6,7] [-cpuprofile DIR]
//
// Every pair runs ours and its baseline interleaved, over several rounds,
// each measurement on a fresh topic and stream, against one nats-server; the
// table shows medians and the median of the per-round ratios. With -runs N
// the whole suite runs N times and the table shows, for every figure, the
// median over the runs, with the spread of the per-round ratios. It writes
// bench-results.md and bench-ratios.svg to -out.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

func main() {
	quick := flag.Bool("quick", false, "smoke run: fewer rounds and smaller counts")
	outDir := flag.String("out", ".cache/bench", "directory for bench-results.md and bench-ratios.svg")
	pairsFlag := flag.String("pairs", "1,2,3,4,5,6,7", "comma-separated pairs to run")
	runs := flag.Int("runs", 1, "run the selected pairs this many times; the table gives the median over the runs and the min–max of the per-round ratios")
	profDir := flag.String("cpuprofile", "", "directory for CPU profiles: the component processes (component-<label>.pprof, "+
		"served by this binary running pluggable.Run like main.go) and this process (bench.pprof)")
	hostProfile := flag.String("component-cpuprofile", "", "internal: serve the component here and write its CPU profile to this file")
	ceiling := flag.Bool("stream-ceiling", false, "internal: serve the bare PullMessages stream of pair 4's ceiling")
	componentEnv := flag.String("component-env", "", "comma-separated KEY=VALUE settings for the component's environment, such as GOGC=400,GOMEMLIMIT=200MiB as deploy/ sets them")
	flag.Parse()
	if *ceiling {
		os.Exit(serveCeiling())
	}
	if *hostProfile != "" {
		os.Exit(hostComponent(*hostProfile))
	}
	if *runs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs must be at least 1")
		os.Exit(2)
	}
	want := map[string]bool{}
	for _, p := range strings.Split(*pairsFlag, ",") {
		if p = strings.TrimSpace(p); p != "" {
			want[p] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	env, err := parseEnv(*componentEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: -component-env:", err)
		os.Exit(2)
	}
	if err := run(ctx, *quick, *runs, *outDir, *profDir, env, want); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseEnv reads -component-env: KEY=VALUE settings separated by commas.
func parseEnv(s string) ([]string, error) {
	var env []string
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=VALUE", kv)
		}
		env = append(env, kv)
	}
	return env, nil
}

func run(ctx context.Context, quick bool, runs int, outDir, profDir string, env []string, want map[string]bool) error {
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Printf("[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	root, err := natstest.ModuleRoot()
	if err != nil {
		return err
	}
	if !filepath.IsAbs(outDir) {
		outDir = filepath.Join(root, outDir)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "jsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	say("building nats-server and the component (go build)")
	defer natstest.RemoveBuilds()
	var natsBin, compBin string
	var wg sync.WaitGroup
	var natsErr, compErr error
	wg.Add(2)
	go func() { defer wg.Done(); natsBin, natsErr = natstest.BuildBinary(natstest.NATSServerPackage) }()
	go func() { defer wg.Done(); compBin, compErr = natstest.BuildBinary(natstest.ComponentPackage) }()
	wg.Wait()
	if natsErr != nil || compErr != nil {
		return fmt.Errorf("build: %v %v", natsErr, compErr)
	}
	cc := componentCmd{bin: compBin, env: env}
	if profDir != "" {
		if profDir, err = filepath.Abs(profDir); err != nil {
			return err
		}
		if err := os.MkdirAll(profDir, 0o755); err != nil {
			return err
		}
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cc = componentCmd{bin: self, env: env, profile: profDir}
		f, err := os.Create(filepath.Join(profDir, "bench.pprof"))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		say("profiling: the component processes are this binary running pluggable.Run; profiles go to %s", profDir)
	}

	ns, err := startNATS(natsBin, dir)
	if err != nil {
		return err
	}
	defer ns.Stop(10 * time.Second)
	nc, err := nats.Connect(ns.url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ver := nc.ConnectedServerVersion()
	say("nats-server %s at %s (pid %d, store %s)", ver, ns.url, ns.Pid(), ns.store)

	log := logger.NewLogger("bench")
	log.SetOutputLevel(logger.FatalLevel) // daprd's client logs every cancelled stream as an error
	b := &bench{
		sz: fullSizes, runID: strconv.FormatInt(time.Now().Unix()%100000, 36), dir: dir, nats: ns, nc: nc, js: js,
		cc: cc, log: log, out: say,
	}
	if quick {
		b.sz = quickSizes
	}
	mode := "full"
	if quick {
		mode = "quick"
	}
	load0 := loadAvg()

	perRun := make([][]*comparison, 0, runs)
	for i := range runs {
		if ctx.Err() != nil {
			break
		}
		if runs > 1 {
			say("run %d/%d", i+1, runs)
		}
		if err := b.startRun(i, runs, dir, profDir); err != nil {
			return err
		}
		cs, err := b.runSuite(ctx, want)
		if err != nil {
			return err
		}
		perRun = append(perRun, cs)
	}

	compNote := "the component binary built from the repository root"
	if profDir != "" {
		compNote = "the component served by the bench binary with a CPU profile (-cpuprofile; larger RSS)"
	}
	if len(env) > 0 {
		compNote += " with " + strings.Join(env, " ")
	}
	meta := fmt.Sprintf("Run %s, mode %s (%s), %s, %s, GOMAXPROCS %d, %d CPUs, load average %s at start and %s at the end, nats-server %s (file storage, R1), %s, took %s.",
		start.Format(time.RFC3339), mode, roundsText(b.sz, len(perRun)), runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH,
		runtime.GOMAXPROCS(0), runtime.NumCPU(), load0, loadAvg(), ver, compNote, time.Since(start).Round(time.Second))
	rep := report{meta: meta, runs: len(perRun), cs: mergeRuns(perRun)}
	fmt.Println()
	fmt.Println(meta)
	printTable(os.Stdout, rep)
	md := filepath.Join(outDir, "bench-results.md")
	svg := filepath.Join(outDir, "bench-ratios.svg")
	if err := writeMarkdown(md, rep); err != nil {
		return err
	}
	if err := writeSVG(svg, rep); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s and %s\n", md, svg)
	if profDir != "" {
		fmt.Printf("CPU profiles in %s: go tool pprof -top %s\n", profDir, filepath.Join(b.cc.profile, "component-main.pprof"))
	}
	return ctx.Err()
}

// roundsText says how many rounds (and runs) the figures come from.
func roundsText(sz sizes, runs int) string {
	if runs <= 1 {
		return fmt.Sprintf("%d rounds; pair 6: %d", sz.rounds, sz.daprdRounds)
	}
	return fmt.Sprintf("%d runs, each of %d rounds; pair 6: %d", runs, sz.rounds, sz.daprdRounds)
}

// startRun gives run i (of runs) its own directory for sockets and daprd's
// resources, and with several runs its own directory of component profiles,
// so that no run finds what an earlier one left behind.
func (b *bench) startRun(i, runs int, dir, profDir string) error {
	name := fmt.Sprintf("run%d", i+1)
	b.dir = filepath.Join(dir, name)
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return err
	}
	if profDir == "" || runs == 1 {
		return nil
	}
	b.cc.profile = filepath.Join(profDir, name)
	return os.MkdirAll(b.cc.profile, 0o755)
}

// runSuite runs the wanted pairs once, each as its rounds, and returns their
// comparisons in pair order; a pair that fails gives a row saying so.
func (b *bench) runSuite(ctx context.Context, want map[string]bool) ([]*comparison, error) {
	var results []*comparison
	runPair := func(id string, f func(context.Context) ([]*comparison, error), title string) {
		if !want[id] || ctx.Err() != nil {
			return
		}
		b.out("pair %s: %s", id, title)
		cs, err := f(ctx)
		if err != nil {
			b.out("pair %s failed: %v", id, err)
			cs = []*comparison{{pair: id, title: title, notRun: "failed: " + oneLine(err.Error())}}
		}
		b.cleanup(context.Background())
		results = append(results, cs...)
	}
	if want["1"] || want["2"] || want["3"] || want["4"] || want["5"] {
		comp, err := b.cc.start(ctx, filepath.Join(b.dir, "sock-main"), "main")
		if err != nil {
			return nil, err
		}
		b.comp = comp
		b.out("component pid %d, socket %s", comp.Pid(), comp.socket)
	}
	runPair("1", b.pair1, "Publish, 1 caller")
	runPair("2", b.pair2, "Publish, 64 callers")
	runPair("3", b.pair3, "BulkPublish, 100 per call")
	runPair("4", b.pair4, "Delivery of a backlog")
	runPair("5", b.pair5, "Latency at 1,000 msgs/s")
	if b.comp != nil {
		b.comp.Stop(15 * time.Second)
		b.comp = nil
	}
	runPair("7", b.pair7, "Component RSS after many messages")
	runPair("6", b.pair6, "Through daprd 1.18.1: ours vs built-in pubsub.jetstream")
	slices.SortStableFunc(results, func(x, y *comparison) int { return strings.Compare(x.pair, y.pair) })
	return results, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
