#!/usr/bin/env bash
# The real Kubernetes control plane, built from its Go modules (this folder's go.mod pins
# them; go.sum holds their hashes): kube-apiserver, kube-controller-manager,
# kube-scheduler and kubectl at the Kubernetes release go.mod requires, and etcd at the
# release that Kubernetes pins. Built once per version into a cache outside the checkout,
# reused after; prints the folder the binaries are in.
#
#   devcluster/build.sh          build if needed; the folder on stdout, the rest on stderr
#
# A failure is said in one line (ERROR: ...) and kept beside the cache: with
# KSTUDIO_KUBE_BUILD=reuse (`make test` sets it for the test runs, after its own try in
# `make kube-build`) that line is said again at once instead of building again, so that
# every Kubernetes test fails with it while the other tests run.
set -euo pipefail
cd "$(dirname "$0")"

CACHE=${KSTUDIO_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kstudio/kube}
FAILED=$CACHE/last-build.failed
fail() {
  echo "ERROR: $1" >&2
  mkdir -p "$CACHE" && echo "ERROR: $1" >"$FAILED"
  exit 1
}

command -v go >/dev/null || fail "Go is needed to build the control plane (go.dev/dl, or apt-get install golang)"
KUBE=$(go list -m -f '{{.Version}}' k8s.io/kubernetes) || fail "go cannot read devcluster/go.mod"
ETCD=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) || fail "go cannot read devcluster/go.mod"
OUT=$CACHE/$KUBE
# What was built, and from which pins: a change of go.sum builds again.
STAMP="$KUBE etcd-$ETCD $(sha256sum go.sum | cut -c1-16)"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

if [ -f "$OUT/.built" ] && [ "$(cat "$OUT/.built")" = "$STAMP" ]; then
  echo "$OUT"
  exit 0
fi
if [ "${KSTUDIO_KUBE_BUILD:-}" = reuse ] && [ -f "$FAILED" ]; then
  cat "$FAILED" >&2
  exit 1
fi

minor=${KUBE#v1.}
minor=${minor%%.*}
# What `kubectl version` and the API server's /version say, as a release build says it.
VERSION_FLAGS="-X k8s.io/component-base/version.gitVersion=$KUBE \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
  -X k8s.io/component-base/version.gitTreeState=clean \
  -X k8s.io/client-go/pkg/version.gitVersion=$KUBE \
  -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.build-XXXXXX")
log=$CACHE/build-$KUBE.log
trap 'rm -rf "$work"' EXIT
echo "Building Kubernetes $KUBE (${BINARIES[*]:0:4}) and etcd $ETCD into $OUT; the first build takes a while (log: $log)" >&2
started=$(date +%s)
if ! {
  go build -trimpath -ldflags "-s -w $VERSION_FLAGS" -o "$work/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl &&
  go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3
} >"$log" 2>&1; then
  fail "building Kubernetes $KUBE failed: $(grep -m1 -v '^#' "$log" || echo "see $log") (log: $log)"
fi
for binary in "${BINARIES[@]}"; do
  [ -x "$work/$binary" ] || fail "the build made no $binary (log: $log)"
done
echo "$STAMP" >"$work/.built"
chmod 0755 "$work"
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
rm -f "$FAILED"
echo "Built Kubernetes $KUBE and etcd $ETCD in $(( $(date +%s) - started )) s" >&2
echo "$OUT"
