# Dapr pluggable pub/sub for NATS JetStream.
SHELL := /bin/bash
BIN        ?= bin/dapr-nats-jetstream
SOCKETS    ?= /tmp/dapr-components-sockets
NATS_PORT  ?= 4222
GOTEST     ?= go test -count=1 -timeout 20m
IMAGE      ?= ghcr.io/dapr-nats/dapr-nats-jetstream:dev
# staticcheck 0.8.2 (2026.2.2), the newest release, runs with Go 1.26. It is fetched from the module
# proxy on first use and cached. SA1019 is off because pluggable/server_test.go uses the deprecated
# v1alpha reflection API on purpose: it is what daprd's discovery calls.
STATICCHECK       ?= go run honnef.co/go/tools/cmd/staticcheck@v0.8.2
STATICCHECK_FLAGS ?= -checks=inherit,-SA1019

.PHONY: build test faults lint fmt-check vet run clean image

build:
	CGO_ENABLED=0 go build -trimpath -o $(BIN) .

## test: formatting, vet, and every test against a real nats-server, under the race detector.
## Dapr's conformance suite (test/conformance) updates a counter from two handlers without a
## lock, so the race detector would flag the suite itself; it runs without -race. Our own code
## runs under -race in every other package, including the gRPC path the suite drives.
test: fmt-check vet
	$(GOTEST) -race $$(go list ./... | grep -v /test/conformance)
	$(GOTEST) ./test/conformance/

## faults: kill and restart real processes, bad input, authentication and TLS (build tag faults).
faults:
	@mkdir -p .cache; $(GOTEST) -race -tags faults -timeout 30m -v ./test/faults/ > .cache/faults.log 2>&1; rc=$$?; \
	grep -E "^(--- |ok|FAIL|PASS)|FAULT |panic:|secrets" .cache/faults.log; \
	if [ $$rc -ne 0 ]; then echo "--- last 300 lines of .cache/faults.log:"; tail -n 300 .cache/faults.log; fi; exit $$rc

## lint: gofmt, go vet, staticcheck (also with the faults and e2e build tags), and go.mod/go.sum tidy.
## Separate from `test`: staticcheck is downloaded from the module proxy the first time.
lint: fmt-check vet
	go mod tidy -diff
	$(STATICCHECK) $(STATICCHECK_FLAGS) ./...
	$(STATICCHECK) $(STATICCHECK_FLAGS) -tags faults ./test/faults/
	$(STATICCHECK) $(STATICCHECK_FLAGS) -tags e2e ./test/e2e/...

## image: the sidecar image (Dockerfile). Needs Docker with BuildKit; push it wherever your cluster pulls from
## and set that name in deploy/*/component.yaml or deploy/*/deployment.yaml.
image:
	docker build -t $(IMAGE) .

## fmt-check: gofmt over tracked and new (not ignored) Go files; the one formatting check.
fmt-check:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...
	go vet -tags faults ./test/faults/
	go vet -tags e2e ./test/e2e/...

## fuzz: every fuzzer, each for FUZZTIME, starting from its seed corpus (testdata/fuzz and f.Add).
## Go runs one fuzz target per invocation, so this lists them and runs them in turn.
## FUZZTIME is a count of inputs (Nx), not a duration: with a duration, Go's fuzzing coordinator
## can report its own deadline as a failure ("context deadline exceeded") on a loaded machine.
FUZZTIME ?= 50000x
.PHONY: fuzz
fuzz:
	@set -e; for file in $$(git grep -l '^func Fuzz' -- '*_test.go'); do \
		for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
			echo "== ./$$(dirname $$file) $$f ($(FUZZTIME))"; \
			go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./$$(dirname $$file); \
		done; \
	done

## run: a local JetStream (nats-server from go.mod's tool line) plus the component.
## Prints the Component YAML and the `dapr run` line of the tweet demo, whose app it builds
## into bin/tweetapp (a built binary, because `dapr stop` does not stop what `go run` compiled).
## Ctrl-C stops both.
run: build
	@go build -o bin/tweetapp ./test/e2e/tweetapp
	@mkdir -p .cache/nats $(SOCKETS)
	@go tool nats-server -js -a 127.0.0.1 -p $(NATS_PORT) -sd .cache/nats >.cache/nats.log 2>&1 & nats=$$!; \
	trap 'kill $$nats 2>/dev/null; wait $$nats 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$(NATS_PORT)) 2>/dev/null && break; sleep 0.1; done; \
	echo "NATS JetStream listening on nats://127.0.0.1:$(NATS_PORT) (log: .cache/nats.log)"; \
	mkdir -p .cache/resources; sed 's#nats://localhost:4222#nats://127.0.0.1:$(NATS_PORT)#' component.yaml > .cache/resources/pubsub.yaml; \
	echo "--- Component YAML (.cache/resources/pubsub.yaml) ---"; cat .cache/resources/pubsub.yaml; \
	echo "--- In another terminal, run the tweet demo app with Dapr (or your app after the --): ---"; \
	echo "DAPR_COMPONENTS_SOCKETS_FOLDER=$(SOCKETS) dapr run --app-id tweets --app-port 3000 --dapr-http-port 3500 --resources-path $(CURDIR)/.cache/resources -- $(CURDIR)/bin/tweetapp"; \
	echo "------"; \
	DAPR_COMPONENTS_SOCKETS_FOLDER=$(SOCKETS) ./$(BIN)

## e2e: the end-to-end tests (test/e2e) against real daprd binaries, v1.18.1 and v1.14.0.
## test/daprd/build.sh builds each daprd once (-tags allcomponents, 10-30 min cold) into
## $(DAPRD_CACHE)/daprd-<version>-allcomponents; later runs reuse it. The tests take about a minute.
DAPRD_VERSIONS ?= v1.18.1 v1.14.0
DAPRD_CACHE    ?= $(HOME)/.cache/dapr-nats-jetstream
E2E_PARALLEL   ?= 4
E2E_FLAGS      ?= -v

.PHONY: daprd e2e demo
daprd:
	@for v in $(DAPRD_VERSIONS); do DAPRD_CACHE=$(DAPRD_CACHE) test/daprd/build.sh $$v || exit 1; done

e2e:
	@bins=""; for v in $(DAPRD_VERSIONS); do \
		p=$$(DAPRD_CACHE=$(DAPRD_CACHE) test/daprd/build.sh $$v) || exit 1; bins="$$bins$${bins:+,}$$v=$$p"; \
	done; \
	echo "DAPRD_BINARIES=$$bins"; \
	DAPRD_BINARIES="$$bins" go test -tags e2e -count=1 -timeout 60m -parallel $(E2E_PARALLEL) $(E2E_FLAGS) ./test/e2e/

## demo: the tweet demo with NATS, the component, daprd v1.18.1 and the app; prints what
## was published and received, then stops everything. DEMO_FLAGS=-v shows every process's output.
demo:
	@daprd=$$(DAPRD_CACHE=$(DAPRD_CACHE) test/daprd/build.sh v1.18.1) || exit 1; \
	mkdir -p .cache/demo && \
	CGO_ENABLED=0 go build -o .cache/demo/dapr-nats-jetstream . && \
	go build -o .cache/demo/tweetapp ./test/e2e/tweetapp && \
	go run ./test/e2e/demo -daprd "$$daprd" -component .cache/demo/dapr-nats-jetstream -app .cache/demo/tweetapp $(DEMO_FLAGS)

## bench: the component against raw nats.go (and daprd's built-in pubsub.jetstream, when
## $(DAPRD_CACHE)/daprd-v1.18.1-allcomponents or $$DAPRD exists), nats-server, component and daprd as
## separate processes. About 5 minutes a run; not part of `test`. Writes .cache/bench/bench-results.md and
## bench-ratios.svg. BENCH_FLAGS: -quick (smoke run), -pairs 1,4, -runs N (the suite N times; medians
## over the runs, with the min–max of the per-round ratios), -out DIR, -cpuprofile DIR,
## -component-env GOGC=400,GOMEMLIMIT=200MiB (the component's environment, as deploy/ sets it).
BENCH_FLAGS ?=
.PHONY: bench
bench:
	DAPRD=$${DAPRD:-$(DAPRD_CACHE)/daprd-v1.18.1-allcomponents} go run ./test/bench $(BENCH_FLAGS)

clean:
	rm -rf bin .cache
