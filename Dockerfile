# syntax=docker/dockerfile:1
#
# The dapr-nats-jetstream pluggable component, as a sidecar image.
#
#   make image                       # docker build -t $(IMAGE) .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <image> --push .
#
# The final image holds one static binary and nothing else: no shell, no
# package manager. It runs as the numeric user 65532 (distroless "nonroot"),
# the same user as daprd's own image, so a socket with mode 0660 is reachable
# by daprd without any group setup. test/deploy checks this file.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -buildvcs=false -ldflags "-s -w" -o /out/dapr-nats-jetstream .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dapr-nats-jetstream /dapr-nats-jetstream
USER 65532:65532
# daprd looks for component sockets here (DAPR_COMPONENTS_SOCKETS_FOLDER). In
# Kubernetes the Dapr injector mounts a shared emptyDir on this path in both
# containers; with plain Docker, share it with daprd through a volume.
VOLUME ["/tmp/dapr-components-sockets"]
ENTRYPOINT ["/dapr-nats-jetstream"]
