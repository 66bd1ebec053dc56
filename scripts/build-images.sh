#!/usr/bin/env bash
# Builds the workload images from this repository, with no base image to pull: each image
# is `FROM scratch` holding one release binary plus the shared libraries it links, for the
# build machine's platform or, cross-compiled, for the Raspberry Pi (linux/arm64). Also
# writes the agent's release tarball for each platform built.
#
#   scripts/build-images.sh [--platform linux/amd64|linux/arm64|all] [testbox|meter-reader|data-api|all]...
#
# Without --platform: the build machine's platform. Tags, for each platform built:
#   motey/<name>:<version>-<arch>            (arch: amd64 or arm64)
# and for the build machine's platform also motey/<name>:<version> and motey/<name>:latest.
# scripts/publish-images.sh pushes both architectures under one tag (a manifest list).
# The test image (testbox) is built for the build machine only; it is additionally tagged
# alpine, busybox and nginx so that Motey's own example blueprints deploy unchanged in tests.
#
# Agent release: target/dist/motey-<version>-<triple>.tar.gz (binary, systemd unit,
# default configuration); see agent/OPERATIONS.md for installing it on a Pi.
#
# MOTEY_BUILD_PROFILE=dev builds the images from the debug binaries instead (stripped of
# their debug information): the test suite's choice, which then shares one build with
# the tests instead of compiling everything a second time with optimizations.
set -euo pipefail
cd "$(dirname "$0")/.."

platform=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) platform=${2:?--platform needs a value}; shift 2 ;;
    --platform=*) platform=${1#--platform=}; shift ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -eq 0 ] && targets=(all)
[ "${targets[0]}" = all ] && targets=(testbox meter-reader data-api)

# binary name -> cargo package
declare -A package=( [testbox]=system-tests [meter-reader]=meter-reader [data-api]=data-api )
for t in "${targets[@]}"; do
  [ -n "${package[$t]:-}" ] || { echo "unknown image: $t" >&2; exit 2; }
done

# Docker's architecture names and Rust's target triples
declare -A triple=( [amd64]=x86_64-unknown-linux-gnu [arm64]=aarch64-unknown-linux-gnu )
case "$(uname -m)" in
  x86_64) host_arch=amd64 ;;
  aarch64) host_arch=arm64 ;;
  *) echo "unsupported build machine: $(uname -m)" >&2; exit 2 ;;
esac
case "${platform:-linux/$host_arch}" in
  linux/amd64) arches=(amd64) ;;
  linux/arm64) arches=(arm64) ;;
  all) arches=(amd64 arm64) ;;
  *) echo "--platform must be linux/amd64, linux/arm64 or all, not $platform" >&2; exit 2 ;;
esac

profile=${MOTEY_BUILD_PROFILE:-release}
case "$profile" in
  release) out=release; profile_args=(--release) ;;
  dev) out=debug; profile_args=() ;;
  *) echo "MOTEY_BUILD_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac
read -r target_dir version < <(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m["target_directory"], next(p["version"] for p in m["packages"] if p["name"] == "motey"))')

build_native() {
  # Always the same build set: cargo unifies dependency features per build, so building a
  # subset would compile the dependencies again with other features (and the agent is
  # needed beside the images anyway, e.g. by scripts/run-survey.sh).
  if [ "$profile" = dev ]; then
    # With the test targets, so that dependencies get the features they have in the test
    # run (dev-dependencies add some) and the tests reuse this build instead of redoing it.
    echo "==> cargo build --workspace --bins --tests"
    cargo build --workspace --bins --tests
  else
    echo "==> cargo build --release --workspace --bins"
    cargo build --release --workspace --bins
  fi
}

build_cross() { # build_cross ARCH
  local t=${triple[$1]}
  if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 \
     || ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    scripts/setup-deps.sh
  fi
  # The shipped binaries only, in the set tests/src/cross.rs builds too (the same set
  # shares one build). The cross linker comes from .cargo/config.toml.
  echo "==> cargo build ${profile_args[*]} --target $t -p motey -p meter-reader -p data-api --bins"
  cargo build "${profile_args[@]}" --target "$t" -p motey -p meter-reader -p data-api --bins
}

bin_dir() { # bin_dir ARCH
  if [ "$1" = "$host_arch" ]; then echo "$target_dir/$out"; else echo "$target_dir/${triple[$1]}/$out"; fi
}

# The aarch64 C library and loader of Debian's cross packages (libc6-arm64-cross).
aarch64_sysroot=/usr/aarch64-linux-gnu/lib

stage_libraries_native() { # ROOTFS BINARY
  # every shared library the binary needs, plus the dynamic loader, at their real paths
  ldd "$2" | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$1$lib"
  done
}

# The shared libraries an aarch64 ELF file names (DT_NEEDED).
needed_libraries() { aarch64-linux-gnu-readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

stage_libraries_aarch64() { # ROOTFS BINARY
  # ldd cannot run an aarch64 binary: follow DT_NEEDED through the cross sysroot instead,
  # into a directory the aarch64 loader searches, plus the loader at its PT_INTERP path.
  local root=$1 bin=$2 lib interpreter
  local -a pending
  local -A seen=()
  mapfile -t pending < <(needed_libraries "$bin")
  while [ ${#pending[@]} -gt 0 ]; do
    lib=${pending[0]}
    pending=("${pending[@]:1}")
    [ -n "${seen[$lib]:-}" ] && continue
    seen[$lib]=1
    [ -e "$aarch64_sysroot/$lib" ] || { echo "$lib (needed by $bin) is not in $aarch64_sysroot" >&2; exit 1; }
    install -D -m 0755 "$(readlink -f "$aarch64_sysroot/$lib")" "$root/lib/aarch64-linux-gnu/$lib"
    mapfile -t -O ${#pending[@]} pending < <(needed_libraries "$aarch64_sysroot/$lib")
  done
  interpreter=$(aarch64-linux-gnu-readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
  install -D -m 0755 "$(readlink -f "$aarch64_sysroot/$(basename "$interpreter")")" "$root$interpreter"
}

# Removes the debug information of a dev build with the binutils of its architecture.
strip_debug() { # strip_debug ARCH FILE
  if [ "$1" = arm64 ] && [ "$host_arch" != arm64 ]; then
    aarch64-linux-gnu-strip --strip-debug "$2"
  else
    strip --strip-debug "$2"
  fi
}

stage_binary() { # stage_binary ARCH ROOTFS BINARY
  local arch=$1 root=$2 bin=$3 staged
  staged="$root/usr/local/bin/$(basename "$bin")"
  install -D -m 0755 "$bin" "$staged"
  if [ "$profile" = dev ]; then strip_debug "$arch" "$staged"; fi
  if [ "$arch" = "$host_arch" ]; then
    stage_libraries_native "$root" "$bin"
  else
    stage_libraries_aarch64 "$root" "$bin"
  fi
}

build_image() { # build_image ARCH NAME
  local arch=$1 t=$2 ctx tag
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  local bins=("$t")
  [ "$t" = meter-reader ] && bins+=(meter-sim)
  for b in "${bins[@]}"; do
    [ -x "$(bin_dir "$arch")/$b" ] && stage_binary "$arch" "$ctx/rootfs" "$(bin_dir "$arch")/$b"
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
  tag="motey/$t:$version-$arch"
  echo "==> docker build $tag"
  # A scratch image runs nothing at build time: no emulation is needed for arm64.
  docker build -q --platform "linux/$arch" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
  if [ "$arch" = "$host_arch" ]; then
    docker tag "$tag" "motey/$t:$version"
    docker tag "$tag" "motey/$t:latest"
  fi
  if [ "$t" = testbox ]; then
    for alias in alpine busybox nginx; do docker tag "$tag" "$alias:latest"; done
  fi
  echo "    built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
}

# The agent's release for one platform: what a node needs besides the Docker Engine.
package_agent() { # package_agent ARCH
  local arch=$1 name stage
  name="motey-$version-${triple[$arch]}"
  stage=$(mktemp -d)
  mkdir "$stage/$name"
  install -m 0755 "$(bin_dir "$arch")/motey" "$stage/$name/motey"
  if [ "$profile" = dev ]; then strip_debug "$arch" "$stage/$name/motey"; fi
  install -m 0644 agent/dist/motey.service "$stage/$name/motey.service"
  # The default configuration with the state directory the systemd unit provides.
  sed 's|^data_dir = .motey$|data_dir = /var/lib/motey|' config.ini > "$stage/$name/config.ini"
  install -m 0644 agent/OPERATIONS.md "$stage/$name/OPERATIONS.md"
  mkdir -p "$target_dir/dist"
  tar -C "$stage" --owner=0 --group=0 -czf "$target_dir/dist/$name.tar.gz" "$name"
  rm -rf "$stage"
  echo "    packaged $target_dir/dist/$name.tar.gz ($(stat -c %s "$target_dir/dist/$name.tar.gz") bytes)"
}

for arch in "${arches[@]}"; do
  if [ "$arch" = "$host_arch" ]; then
    build_native
  elif [ "$arch" = arm64 ]; then
    build_cross "$arch"
  else
    echo "building linux/$arch on $(uname -m) is not supported" >&2; exit 2
  fi
  for t in "${targets[@]}"; do
    # The test image serves the test suite on the build machine only.
    [ "$t" = testbox ] && [ "$arch" != "$host_arch" ] && continue
    build_image "$arch" "$t"
  done
  package_agent "$arch"
done
