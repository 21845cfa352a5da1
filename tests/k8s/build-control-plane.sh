#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager and kube-proxy from their Go modules
# and cache the binaries outside the repository:
#
#   ${ZEROSERVE_K8S_CACHE:-~/.cache/zeroserve/k8s}/<kubernetes version>/{etcd,kube-apiserver,kube-controller-manager,kube-proxy}
#
# kube-proxy (iptables mode) routes Service IPs in tests/k8s/traffic.py's end-to-end tests.
#
# k8s.io/kubernetes points its staging modules (k8s.io/api, k8s.io/client-go, ...)
# at ./staging with `replace` directives, so `go install k8s.io/kubernetes/cmd/...@v1.x`
# refuses to build. We build from a tiny wrapper module of our own that requires
# k8s.io/kubernetes at the tag and replaces every staging module with its
# published twin at the same tag (v0.<minor>.<patch>).
#
# The build is deliberately polite: `nice -n 19`, GOMAXPROCS=1 and `go build -p 1`,
# so on a shared machine it only uses idle CPU. It is idempotent: when the four
# binaries exist it prints their directory and exits.
#
# Usage: tests/k8s/build-control-plane.sh            # prints the binary directory last
#        K8S_VERSION=v1.37.2 ETCD_VERSION=v3.7.3 tests/k8s/build-control-plane.sh
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE="${ZEROSERVE_K8S_CACHE:-$HOME/.cache/zeroserve/k8s}"
BIN="$CACHE/$K8S_VERSION"
WORK="${ZEROSERVE_K8S_BUILD:-$HOME/.cache/zeroserve/k8s-build}/$K8S_VERSION"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

KUBE_CMDS=(kube-apiserver kube-controller-manager kube-proxy)
if [[ -x "$BIN/etcd" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/kube-proxy" ]]; then
    echo "$BIN"
    exit 0
fi

# Polite by default (other work shares the cores); CI=true (nothing else running) uses them all.
JOBS=1
GO="nice -n 19 go"
if [[ "${CI:-}" == "true" ]]; then
    JOBS=$(nproc)
    GO="go"
fi
export GOMAXPROCS=$JOBS CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
mkdir -p "$BIN" "$WORK/etcd" "$WORK/kube"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# --- etcd: our own main package calling etcdmain.Main (the same as etcd's own main).
if [[ ! -x "$BIN/etcd" ]]; then
    cd "$WORK/etcd"
    cat > go.mod <<MOD
module zeroserve.local/etcdbuild

go 1.26.0
MOD
    cat > main.go <<'GO'
// Package main runs etcd, exactly as etcd's own main package does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    log "etcd $ETCD_VERSION: resolving modules"
    $GO get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    $GO mod tidy
    log "etcd: building"
    start=$(date +%s)
    $GO build -p "$JOBS" -trimpath -ldflags='-s -w' -o "$BIN/etcd.tmp" .
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    log "etcd: built in $(( $(date +%s) - start ))s"
fi

# --- kube-apiserver, kube-controller-manager and kube-proxy from a wrapper module.
cd "$WORK/kube"
if [[ ! -f go.mod ]]; then
    log "kubernetes $K8S_VERSION: writing the wrapper module (staging at $STAGING_VERSION)"
    $GO mod download -json "k8s.io/kubernetes@$K8S_VERSION" > /dev/null
    MODFILE="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    {
        echo "module zeroserve.local/kubebuild"
        echo
        echo "go 1.26.0"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        # every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.y.z`
        sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$MODFILE"
        echo ")"
    } > go.mod.new
    mv go.mod.new go.mod
fi
log "kubernetes: resolving modules"
pkgs=()
for cmd in "${KUBE_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"); done
$GO get "${pkgs[@]}"
for cmd in "${KUBE_CMDS[@]}"; do
    if [[ ! -x "$BIN/$cmd" ]]; then
        log "$cmd: building"
        start=$(date +%s)
        $GO build -p "$JOBS" -trimpath -ldflags='-s -w' -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
        mv "$BIN/$cmd.tmp" "$BIN/$cmd"
        log "$cmd: built in $(( $(date +%s) - start ))s"
    fi
done
echo "$BIN"
