#!/usr/bin/env bash
# Builds the workload images from this repository, with no base image to pull:
# each image is `FROM scratch` holding one release binary plus the shared libraries
# it links (found with ldd). Usage: scripts/build-images.sh [testbox|meter-reader|data-api|all]...
#
# Image tags: motey/<name>:latest. The test image is additionally tagged alpine, busybox
# and nginx so that Motey's own example blueprints deploy unchanged in tests.
#
# MOTEY_BUILD_PROFILE=dev builds the images from the debug binaries instead (stripped of
# their debug information): the test suite's choice, which then shares one build with
# the tests instead of compiling everything a second time with optimizations.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
[ "${targets[0]}" = all ] && targets=(testbox meter-reader data-api)

# binary name -> cargo package, and the entrypoint arguments of each image
declare -A package=( [testbox]=system-tests [meter-reader]=meter-reader [data-api]=data-api )

for t in "${targets[@]}"; do
  [ -n "${package[$t]:-}" ] || { echo "unknown image: $t" >&2; exit 2; }
done
# Always the same build set: cargo unifies dependency features per build, so building a
# subset would compile the dependencies again with other features (and the agent is needed
# beside the images anyway, e.g. by scripts/run-survey.sh).
profile=${MOTEY_BUILD_PROFILE:-release}
case "$profile" in
  release) out=release ;;
  dev) out=debug ;;
  *) echo "MOTEY_BUILD_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
if [ "$profile" = dev ]; then
  # With the test targets, so that dependencies get the features they have in the test
  # run (dev-dependencies add some) and the tests reuse this build instead of redoing it.
  echo "==> cargo build --workspace --bins --tests"
  cargo build --workspace --bins --tests
else
  echo "==> cargo build --release --workspace --bins"
  cargo build --release --workspace --bins
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')

stage_binary() { # stage_binary ROOTFS BINARY
  local root=$1 bin=$2
  install -D -m 0755 "$bin" "$root/usr/local/bin/$(basename "$bin")"
  if [ "$profile" = dev ]; then strip --strip-debug "$root/usr/local/bin/$(basename "$bin")"; fi
  # every shared library the binary needs, plus the dynamic loader, at their real paths
  ldd "$bin" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

for t in "${targets[@]}"; do
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  bins=("$t")
  [ "$t" = meter-reader ] && bins+=(meter-sim)
  for b in "${bins[@]}"; do
    [ -x "$target_dir/$out/$b" ] && stage_binary "$ctx/rootfs" "$target_dir/$out/$b"
  done
  mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/data" "$ctx/rootfs/etc"
  chmod 1777 "$ctx/rootfs/tmp"
  echo "root:x:0:0:root:/:/usr/local/bin/$t" > "$ctx/rootfs/etc/passwd"
  cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
WORKDIR /data
ENTRYPOINT ["/usr/local/bin/$t"]
DOCKERFILE
  echo "==> docker build motey/$t:latest"
  docker build -q -t "motey/$t:latest" "$ctx" >/dev/null
  if [ "$t" = testbox ]; then
    for alias in alpine busybox nginx; do docker tag motey/testbox:latest "$alias:latest"; done
  fi
  rm -rf "$ctx"
  trap - EXIT
  echo "    built motey/$t:latest ($(docker image inspect -f '{{.Size}}' "motey/$t:latest") bytes)"
done
