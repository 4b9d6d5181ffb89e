#!/usr/bin/env bash
# Build the control-plane binaries the k8s tests run: kube-apiserver, kubectl, etcd, helm.
#
# They are compiled from the pinned Go modules beside this script (kubernetes/,
# etcd/, helm/: separate modules so their dependency graphs never meet) into
#
#     ${SMARTTASKS_CACHE:-~/.cache/smarttasks}/controlplane/<versions-key>/
#
# The key names the three upstream versions plus a digest of the go.mod/go.sum
# files, so a version bump builds a new folder and an unchanged checkout finds
# the old one. Binaries already there are not rebuilt; a build that is cut short
# leaves nothing behind (each binary is moved into place when complete), and a
# lock keeps concurrent test runs from building the same thing twice.
#
# If KUBEBUILDER_ASSETS points at a folder with kube-apiserver, etcd and kubectl
# (setup-envtest's layout) those are used as they are; helm is taken from there
# too when present, otherwise built here.
#
# The last line of standard output is the folder holding all four binaries.
# Exit status 3 means the binaries are missing and there is no Go toolchain to
# build them with.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${SMARTTASKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smarttasks}"
binaries=(kube-apiserver kubectl etcd helm)

log() { echo "build.sh: $*" >&2; }

# The version a module requires, read from go.mod so that no Go toolchain is
# needed to find an existing build.
required_version() {
    sed -n "s#^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}$2[[:space:]]\{1,\}\(v[^[:space:]]*\).*#\2#p" \
        "$here/$1/go.mod" | head -n1
}

kube_version="$(required_version kubernetes k8s.io/kubernetes)"
etcd_version="$(required_version etcd go.etcd.io/etcd/server/v3)"
helm_version="$(required_version helm helm.sh/helm/v4)"
for v in kube_version etcd_version helm_version; do
    [[ -n "${!v}" ]] || { log "cannot read $v from the go.mod files in $here"; exit 1; }
done
# Bump when the way the binaries are built (flags, ldflags) changes, to rebuild them.
recipe=2
digest="$( (echo "recipe $recipe"; cat "$here"/{kubernetes,etcd,helm}/go.{mod,sum} "$here"/etcd/main.go) |
    sha256sum | cut -c1-12)"
key="k8s-${kube_version}_etcd-${etcd_version}_helm-${helm_version}_${digest}"
out="$cache_root/controlplane/$key"

have() {  # have DIR NAME...: every NAME is an executable file in DIR
    local dir="$1"; shift
    local name
    for name in "$@"; do [[ -x "$dir/$name" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && have "$KUBEBUILDER_ASSETS" kube-apiserver etcd kubectl; then
    if have "$KUBEBUILDER_ASSETS" helm; then
        echo "$KUBEBUILDER_ASSETS"
        exit 0
    fi
    # Borrow the control plane, build only helm beside links to it.
    out="$cache_root/controlplane/assets-$(printf '%s' "$KUBEBUILDER_ASSETS" | sha256sum | cut -c1-12)_helm-${helm_version}_${digest}"
    mkdir -p "$out"
    for name in kube-apiserver etcd kubectl; do
        ln -sfn "$KUBEBUILDER_ASSETS/$name" "$out/$name"
    done
fi

if have "$out" "${binaries[@]}"; then
    echo "$out"
    exit 0
fi

# The toolchain: $GO if set, else go on PATH, else the standard install location.
go="${GO:-$(command -v go || true)}"
if [[ -z "$go" && -x /usr/local/go/bin/go ]]; then
    go=/usr/local/go/bin/go
fi
if [[ -z "$go" || ! -x "$go" ]]; then
    log "no Go toolchain (\$GO, go on PATH or /usr/local/go/bin/go) to build ${binaries[*]} into $out"
    exit 3
fi

mkdir -p "$out"
exec 9>"$out.lock"
flock 9  # another run may be building the same key; wait for it, then reuse its work

export GOMODCACHE="${GOMODCACHE:-$cache_root/go/mod}"
export GOCACHE="${GOCACHE:-$cache_root/go/build}"
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off

# build MODULE LDFLAGS PACKAGE...: compile the packages' commands into a scratch
# folder, then move each binary into $out, so $out never holds a partial file.
build() {
    local module="$1" ldflags="$2"; shift 2
    local scratch
    scratch="$(mktemp -d "$out/.build.XXXXXX")"
    log "building $* ($module) ..."
    local start=$SECONDS
    (cd "$here/$module" && "$go" build -trimpath -ldflags="-s -w $ldflags" -o "$scratch/" "$@")
    log "built $* in $((SECONDS - start))s"
    mv "$scratch"/* "$out/"
    rmdir "$scratch"
}

total_start=$SECONDS
if ! have "$out" kube-apiserver kubectl; then
    # kubectl and the API server read their version from ldflags as the upstream
    # release build sets them (hack/lib/version.sh); kubectl's version-skew check
    # and helm's kubeVersion constraints compare against it.
    minor="${kube_version#v1.}"; minor="${minor%%.*}"
    # The release's commit time stands in for the build date, so rebuilds are identical.
    info="$(cd "$here/kubernetes" && "$go" mod download -json "k8s.io/kubernetes@$kube_version" |
        sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')"
    build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)"
    kube_ldflags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
        kube_ldflags+=" -X $pkg.buildDate=${build_date:-1970-01-01T00:00:00Z}"
    done
    build kubernetes "$kube_ldflags" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
fi
if ! have "$out" etcd; then
    build etcd "" .  # the module is named .../etcd, so the binary is too
fi
if ! have "$out" helm; then
    build helm "-X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
        helm.sh/helm/v4/cmd/helm
fi
have "$out" "${binaries[@]}" || { log "build finished without all of ${binaries[*]} in $out"; exit 1; }
log "control plane ready in $((SECONDS - total_start))s"
echo "$out"
