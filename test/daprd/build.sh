#!/usr/bin/env bash
# Usage: test/daprd/build.sh VERSION
#
# Builds daprd VERSION (with every component, -tags allcomponents) from the Go
# module test/daprd/VERSION into $DAPRD_CACHE/daprd-VERSION-allcomponents
# (default ~/.cache/dapr-nats-jetstream), unless that file already exists, and
# prints the binary's path on stdout. The build goes to a temporary name first
# and is renamed into place, so an interrupted build never leaves a truncated
# binary behind. A cold build takes 10-30 minutes; progress goes to stderr.
#
# The binary is stamped with its version, as Dapr's release builds are, so that
# `daprd --version`, the dapr CLI and daprd's metadata API report it rather
# than "edge". The cache is keyed by version alone, so an unstamped binary
# already there (it reports "edge") is reused as it is; delete it to get a
# stamped one.
set -euo pipefail

version="${1:?usage: $0 VERSION (one of: $(cd "$(dirname "$0")" && ls -d v*/ | tr -d / | tr '\n' ' '))}"
here="$(cd "$(dirname "$0")" && pwd)"
module="$here/$version"
cache="${DAPRD_CACHE:-$HOME/.cache/dapr-nats-jetstream}"
out="$cache/daprd-$version-allcomponents"

if [ -x "$out" ]; then
	echo "$out"
	exit 0
fi
if [ ! -f "$module/go.mod" ]; then
	echo "build.sh: no Go module for daprd $version at $module" >&2
	exit 2
fi

# A module whose go.mod names a toolchain is built with exactly that Go: daprd
# v1.14.0 needs Go 1.22 (its kitex/frugal and pid dependencies do not build
# with Go 1.23 or later). The go command fetches that toolchain from the module
# proxy once.
toolchain="$(awk '$1 == "toolchain" { print $2 }' "$module/go.mod")"
if [ -n "$toolchain" ]; then
	export GOTOOLCHAIN="$toolchain"
fi

# The same variables Dapr's Makefile sets (DEFAULT_LDFLAGS), with the values of a
# release built from tag vX.Y.Z: the version without the "v", and the tag as
# git describe prints it. The commit is not known here and stays empty.
ldflags="-X github.com/dapr/dapr/pkg/buildinfo.version=${version#v}"
ldflags+=" -X github.com/dapr/dapr/pkg/buildinfo.gitversion=$version"
ldflags+=" -X github.com/dapr/kit/logger.DaprVersion=${version#v}"

mkdir -p "$cache"
tmp="$(mktemp "$cache/.daprd-$version.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "building daprd $version into $out (cold builds take 10-30 minutes)..." >&2
start=$(date +%s)
(cd "$module" && nice -n 15 go build -tags allcomponents -ldflags "$ldflags" -o "$tmp" .)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "built daprd $version in $(($(date +%s) - start))s" >&2
echo "$out"
