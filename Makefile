# Dapr pluggable pub/sub for NATS JetStream.
SHELL := /bin/bash
BIN        ?= bin/dapr-nats-jetstream
SOCKETS    ?= /tmp/dapr-components-sockets
NATS_PORT  ?= 4222
GOTEST     ?= go test -count=1 -timeout 20m

.PHONY: build test faults lint fmt-check vet run clean

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
	$(GOTEST) -race -tags faults -timeout 30m ./test/faults/

lint: fmt-check vet

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	go vet ./...
	go vet -tags faults ./test/faults/

## run: a local JetStream (nats-server from go.mod's tool line) plus the component.
## Prints the Component YAML and the `dapr run` line to use. Ctrl-C stops both.
run: build
	@mkdir -p .cache/nats $(SOCKETS)
	@go tool nats-server -js -a 127.0.0.1 -p $(NATS_PORT) -sd .cache/nats >.cache/nats.log 2>&1 & nats=$$!; \
	trap 'kill $$nats 2>/dev/null; wait $$nats 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$(NATS_PORT)) 2>/dev/null && break; sleep 0.1; done; \
	echo "NATS JetStream listening on nats://127.0.0.1:$(NATS_PORT) (log: .cache/nats.log)"; \
	mkdir -p .cache/resources; sed 's#nats://localhost:4222#nats://127.0.0.1:$(NATS_PORT)#' component.yaml > .cache/resources/pubsub.yaml; \
	echo "--- Component YAML (.cache/resources/pubsub.yaml) ---"; cat .cache/resources/pubsub.yaml; \
	echo "--- In another terminal, run your app with Dapr: ---"; \
	echo "DAPR_COMPONENTS_SOCKETS_FOLDER=$(SOCKETS) dapr run --app-id myapp --app-port 3000 --resources-path $(CURDIR)/.cache/resources -- <your app command>"; \
	echo "------"; \
	DAPR_COMPONENTS_SOCKETS_FOLDER=$(SOCKETS) ./$(BIN)

clean:
	rm -rf bin .cache
