#!/usr/bin/env bash
# Pin k8s.io/kubernetes in the kubernetes wrapper module and derive its replace list.
#
# k8s.io/kubernetes publishes a go.mod that requires every staging module
# (k8s.io/api, k8s.io/apimachinery, k8s.io/client-go, ...) at v0.0.0 and points
# them at ./staging/src with replace directives, which only work inside the
# kubernetes repository. A module that depends on it must replace each staging
# module with its published v0.<minor>.<patch> release. The list changes between
# minor releases, so it is read from the upstream go.mod rather than kept by hand.
#
# Usage: tests/controlplane/gen-replaces.sh v1.36.5
# Rewrites tests/controlplane/kubernetes/go.mod and go.sum; commit both.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/kubernetes"
version="${1:?usage: $0 v1.<minor>.<patch>}"
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || {
    echo "expected a release version like v1.36.5, got '$version'" >&2
    exit 2
}
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
cache="${SMARTTASKS_GO_CACHE:-$HOME/.cache/smarttasks/go}"
export GOMODCACHE="${GOMODCACHE:-$cache/mod}" GOCACHE="${GOCACHE:-$cache/build}"
export GOFLAGS="${GOFLAGS:-} -mod=mod"

upstream_mod="$(cd "$module_dir" && "$go" mod download -json "k8s.io/kubernetes@$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[[ -f "$upstream_mod" ]] || { echo "could not download k8s.io/kubernetes@$version" >&2; exit 1; }

# Lines such as "k8s.io/api => ./staging/src/k8s.io/api" name the staging modules.
mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$upstream_mod" | sort -u)
(( ${#staging[@]} > 0 )) || { echo "no staging modules found in $upstream_mod" >&2; exit 1; }

cd "$module_dir"
# Drop replacements left over from an earlier version before adding the new ones.
for old in $("$go" mod edit -json | sed -n 's/^[[:space:]]*"Path": "\(k8s\.io\/[^"]*\)",$/\1/p' | sort -u); do
    "$go" mod edit -dropreplace="$old" 2>/dev/null || true
done
edits=(-require="k8s.io/kubernetes@$version")
for mod in "${staging[@]}"; do
    edits+=(-replace="$mod=$mod@$staging_version")
done
"$go" mod edit "${edits[@]}"
"$go" mod tidy
echo "k8s.io/kubernetes $version with ${#staging[@]} staging modules at $staging_version" >&2
