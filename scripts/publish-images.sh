#!/usr/bin/env bash
# Publishes the workload images of both architectures under one tag, so that a Raspberry Pi
# and an x86_64 node pulling the same reference each get their own image:
#
#   scripts/publish-images.sh REGISTRY [meter-reader|data-api|all]...
#
# Pushes motey/<name>:<version>-amd64 and motey/<name>:<version>-arm64 (built by
# `scripts/build-images.sh --platform all`) to REGISTRY/motey/<name>:<version>-<arch> and
# makes the manifest list REGISTRY/motey/<name>:<version> of the two; the platform of each
# entry is read from the image's own metadata. REGISTRY is host[:port][/path]; a registry
# on loopback is spoken to over plain HTTP, as the Docker Engine does.
set -euo pipefail
cd "$(dirname "$0")/.."

registry=${1:?usage: scripts/publish-images.sh REGISTRY [meter-reader|data-api|all]...}
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
[ "${targets[0]}" = all ] && targets=(meter-reader data-api)
for t in "${targets[@]}"; do
  case "$t" in meter-reader|data-api) ;; *) echo "unknown image: $t" >&2; exit 2 ;; esac
done

version=$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "motey"))')
insecure=()
case "$registry" in 127.*|localhost|localhost:*|\[::1\]*) insecure=(--insecure) ;; esac

for t in "${targets[@]}"; do
  list="$registry/motey/$t:$version"
  entries=()
  for arch in amd64 arm64; do
    local_tag="motey/$t:$version-$arch"
    docker image inspect "$local_tag" >/dev/null 2>&1 || {
      echo "$local_tag is missing: run scripts/build-images.sh --platform all $t" >&2
      exit 1
    }
    entry="$list-$arch"
    echo "==> docker push $entry"
    docker tag "$local_tag" "$entry"
    docker push -q "$entry" >/dev/null
    entries+=("$entry")
  done
  echo "==> docker manifest push $list (${entries[*]##*-})"
  docker manifest create "${insecure[@]}" --amend "$list" "${entries[@]}" >/dev/null
  # --purge: the list is not kept locally, so publishing again starts from the registry.
  docker manifest push "${insecure[@]}" --purge "$list" >/dev/null
done
