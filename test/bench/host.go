package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/dapr/kit/logger"

	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

// hostComponent runs the component exactly as main.go of the repository
// does (pluggable.Run with the socket folder from
// DAPR_COMPONENTS_SOCKETS_FOLDER), with a CPU profile written to profile
// until SIGTERM. The component binary has no profiling flag, so -cpuprofile
// starts the bench binary itself in this mode as the component process.
func hostComponent(profile string) int {
	f, err := os.Create(profile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// SIGUSR1 writes a heap profile and the runtime's memory statistics
	// next to the CPU profile (pair 7 asks for them at its two RSS samples).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for n := 1; ; n++ {
			<-usr1
			writeHeap(fmt.Sprintf("%s.heap-%d", profile, n))
		}
	}()
	log := logger.NewLogger("nats-jetstream")
	log.SetOutputLevel(logger.WarnLevel)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	folder := os.Getenv("DAPR_COMPONENTS_SOCKETS_FOLDER")
	err = pluggable.Run(ctx, pluggable.Options{SocketFolder: folder, DrainTimeout: 2 * time.Second, Logger: log})
	pprof.StopCPUProfile()
	_ = f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func writeHeap(path string) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	stats := fmt.Sprintf("HeapAlloc %d MB, HeapInuse %d MB, HeapIdle %d MB, HeapReleased %d MB, StackInuse %d MB, Sys %d MB, NumGC %d, goroutines %d\n",
		ms.HeapAlloc>>20, ms.HeapInuse>>20, ms.HeapIdle>>20, ms.HeapReleased>>20, ms.StackInuse>>20, ms.Sys>>20, ms.NumGC, runtime.NumGoroutine())
	_ = os.WriteFile(path+".txt", []byte(stats), 0o644)
	if f, err := os.Create(path + ".pprof"); err == nil {
		_ = pprof.Lookup("heap").WriteTo(f, 0)
		_ = f.Close()
	}
}
