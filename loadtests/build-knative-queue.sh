#!/usr/bin/env bash
# Build Knative Serving's own queue-proxy (knative.dev/serving/cmd/queue) from its Go module, as
# the peer of the hop benchmark (`python -m loadtests.bench_hop --knative`), and cache the binary
# outside the repository:
#
#   ${ZEROSERVE_TOOLS_CACHE:-~/.cache/zeroserve/tools}/knative-queue-<version>/queue
#
# `go install knative.dev/serving/cmd/queue@<version>` refuses: the module's go.mod has a
# `replace` directive (gorilla/websocket pinned to v1.5.0). So this makes a throw-away module
# with that same replace, `go get`s the package into it and builds it there: CGO_ENABLED=0 and
# -trimpath, as Knative's release images are built. v0.42.2 (the Knative 1.16 era) is the newest
# version the module proxy serves that builds (v0.51.0 needs a knative.dev/pkg it refuses).
# See ../shared/reference/knative-queue-proxy-peer.md. About 40 s and a 36 MB static binary.
#
# Idempotent: when the binary exists it prints its path and exits. Needs Go and the module proxy.
#
# Usage: loadtests/build-knative-queue.sh          # prints the binary's path last
#        KNATIVE_QUEUE_VERSION=v0.42.2 loadtests/build-knative-queue.sh
set -euo pipefail

KNATIVE_QUEUE_VERSION="${KNATIVE_QUEUE_VERSION:-v0.42.2}"
CACHE="${ZEROSERVE_TOOLS_CACHE:-$HOME/.cache/zeroserve/tools}"
BIN="$CACHE/knative-queue-$KNATIVE_QUEUE_VERSION"

if [[ -x "$BIN/queue" ]]; then
    echo "$BIN/queue"
    exit 0
fi

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat >go.mod <<'EOF'
module zeroserve.local/knative-queue

go 1.22

replace github.com/gorilla/websocket => github.com/gorilla/websocket v1.5.0
EOF
if ! go get "knative.dev/serving/cmd/queue@$KNATIVE_QUEUE_VERSION" >&2; then
    echo "build-knative-queue.sh: could not fetch knative.dev/serving/cmd/queue@$KNATIVE_QUEUE_VERSION" >&2
    exit 1
fi
mkdir -p "$BIN"
go build -trimpath -o "$BIN/queue.tmp" knative.dev/serving/cmd/queue
mv "$BIN/queue.tmp" "$BIN/queue"
echo "$BIN/queue"
