// Command httpload publishes through daprd's HTTP API from one caller for a
// while, and reports the rate, the latency percentiles and the CPU each named
// process used per publish (utime+stime from /proc). profile-publish.sh
// drives it.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func cpu(pid string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

func main() {
	url := flag.String("url", "", "daprd's publish URL, such as http://127.0.0.1:3500/v1.0/publish/pubsub/orders")
	d := flag.Duration("d", 20*time.Second, "how long to publish")
	pids := flag.String("pids", "", "comma-separated process ids whose CPU to report")
	flag.Parse()
	body := []byte(`{"t":1,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	c := &http.Client{}
	var lat []time.Duration
	ps := strings.Split(*pids, ",")
	before := map[string]float64{}
	for _, p := range ps {
		before[p] = cpu(p)
	}
	start := time.Now()
	for time.Since(start) < *d {
		t0 := time.Now()
		resp, err := c.Post(*url, "application/json", bytes.NewReader(body))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			fmt.Println(resp.Status)
			os.Exit(1)
		}
		lat = append(lat, time.Since(t0))
	}
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("n=%d rate=%.0f/s p50=%v p90=%v p99=%v\n", len(lat), float64(len(lat))/el.Seconds(), lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)*99/100])
	for _, p := range ps {
		used := cpu(p) - before[p]
		fmt.Printf("pid %s: %.2f CPU-s, %.0f µs/publish\n", p, used, used/float64(len(lat))*1e6)
	}
}
