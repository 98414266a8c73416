#!/usr/bin/env bash
# Usage: test/bench/profile-publish.sh [WORKDIR]
#
# Where a publish through daprd spends its CPU: one daprd v1.18.1 (from
# $DAPRD, or the make daprd cache) with this component and the built-in
# pubsub.jetstream, one caller publishing over HTTP, two rounds of 15 s each.
# It prints the rate, latency and CPU per publish of daprd and the component,
# and writes CPU profiles: daprd-<ours|builtin>-<round>.pprof (daprd's
# --enable-profiling) and comp.pprof (the component, hosted by the bench
# binary as in make bench -cpuprofile). Read them with go tool pprof -top.
set -u
W="${1:-/tmp/profile-publish}"; rm -rf "$W"; mkdir -p $W/sock $W/res $W/nats
DAPRD="${DAPRD:-$HOME/.cache/dapr-nats-jetstream/daprd-v1.18.1-allcomponents}"
cd "$(dirname "$0")/../.."
go build -o $W/bench ./test/bench && go build -o $W/httpload ./test/bench/httpload || exit 1
go tool nats-server -js -a 127.0.0.1 -p 14333 -sd $W/nats > $W/nats.log 2>&1 & NATS=$!
for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/14333) 2>/dev/null && break; sleep 0.1; done
DAPR_COMPONENTS_SOCKETS_FOLDER=$W/sock $W/bench -component-cpuprofile $W/comp.pprof > $W/comp.log 2>&1 & COMP=$!
for i in $(seq 100); do [ -S $W/sock/nats-jetstream.sock ] && break; sleep 0.1; done
cat > $W/res/ours.yaml <<Y
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ours}
spec:
  type: pubsub.nats-jetstream
  version: v1
  metadata:
  - {name: natsURL, value: "nats://127.0.0.1:14333"}
  - {name: streamName, value: P6X}
  - {name: streamSubjects, value: "p6x.>"}
Y
cat > $W/res/builtin.yaml <<Y
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: builtin}
spec:
  type: pubsub.jetstream
  version: v1
  metadata:
  - {name: natsURL, value: "nats://127.0.0.1:14333"}
  - {name: streamName, value: P6X}
Y
DAPR_COMPONENTS_SOCKETS_FOLDER=$W/sock "$DAPRD" --app-id bench \
  --resources-path $W/res --dapr-http-port 14350 --dapr-grpc-port 14351 --metrics-port 14352 \
  --dapr-internal-grpc-port 14353 --enable-profiling --profile-port 14354 --dapr-listen-addresses 127.0.0.1 \
  --log-level warn > $W/daprd.log 2>&1 & DAPRD=$!
for i in $(seq 100); do curl -sf -o /dev/null localhost:14350/v1.0/healthz && break; sleep 0.2; done
# creates the stream through ours, then warms both
$W/httpload -url http://127.0.0.1:14350/v1.0/publish/ours/p6x.o -d 3s -pids $DAPRD > /dev/null
$W/httpload -url http://127.0.0.1:14350/v1.0/publish/builtin/p6x.b -d 3s -pids $DAPRD > /dev/null
for round in 1 2; do
for v in ours builtin; do
  curl -s -o $W/daprd-$v-$round.pprof "localhost:14354/debug/pprof/profile?seconds=14" & P=$!
  echo "== $v round $round"; $W/httpload -url http://127.0.0.1:14350/v1.0/publish/$v/p6x.${v:0:1} -d 15s -pids $DAPRD,$COMP
  wait $P
done
done
kill $DAPRD; wait $DAPRD; kill $COMP; wait $COMP; kill $NATS; wait $NATS
echo "profiles in $W"
