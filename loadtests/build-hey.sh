#!/usr/bin/env bash
# Build hey (github.com/rakyll/hey) from its Go module, its CSV times written to 0.1 µs, and
# cache the binary outside the repository:
#
#   ${ZEROSERVE_TOOLS_CACHE:-~/.cache/zeroserve/tools}/hey-<version>-us/hey
#
# hey writes every time as "%4.4f" seconds, so its per-request CSV (which the hop benchmark
# pools into p50 and p99) moves in 0.1 ms steps. At 1,000 requests/s nginx adds 0.1–0.4 ms at
# p99, so one step moves the queue-proxy's ratio to nginx's by 25–100 %. This build changes
# that one format string to "%4.7f" and nothing else: requests, pacing and timing are hey's.
# loadtests/harness.py uses this binary when it exists (or $ZEROSERVE_HEY), else `hey` on PATH.
#
# Idempotent: when the binary exists it prints its path and exits. Needs Go and the module
# proxy (hey and golang.org/x/net).
#
# Usage: loadtests/build-hey.sh          # prints the binary's path last
#        HEY_VERSION=v0.1.5 loadtests/build-hey.sh
set -euo pipefail

HEY_VERSION="${HEY_VERSION:-v0.1.5}"
CACHE="${ZEROSERVE_TOOLS_CACHE:-$HOME/.cache/zeroserve/tools}"
BIN="$CACHE/hey-$HEY_VERSION-us"

if [[ -x "$BIN/hey" ]]; then
    echo "$BIN/hey"
    exit 0
fi

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="$(cd "$work" && go mod download -json "github.com/rakyll/hey@$HEY_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$src" || ! -f "$src/requester/print.go" ]]; then
    echo "build-hey.sh: could not fetch github.com/rakyll/hey@$HEY_VERSION" >&2
    exit 1
fi
cp -r "$src" "$work/hey"
chmod -R u+w "$work/hey"
print="$work/hey/requester/print.go"
if ! grep -q 'return fmt.Sprintf("%4.4f", duration)' "$print"; then
    echo "build-hey.sh: $print no longer formats times as %4.4f; check the patch" >&2
    exit 1
fi
sed -i 's/return fmt.Sprintf("%4.4f", duration)/return fmt.Sprintf("%4.7f", duration)/' "$print"
mkdir -p "$BIN"
(cd "$work/hey" && go build -trimpath -o "$BIN/hey.tmp" .)
mv "$BIN/hey.tmp" "$BIN/hey"
echo "$BIN/hey"
