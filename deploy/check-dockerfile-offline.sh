#!/usr/bin/env bash
# Runs the Dockerfile on a machine with no image registry, against stand-ins for its two base
# images, and then the container tests on the image it built.
#
# Why: `docker build .` needs rust:1-bookworm and debian:bookworm-slim from Docker Hub, which
# this project's machines cannot reach, so the Dockerfile would otherwise never run here. The
# stand-ins are made from Debian's packages and this machine's Rust toolchain:
#   stategrid-standin-debian:bookworm-slim   debootstrap --variant=minbase bookworm
#   stategrid-standin-rust:1-bookworm        the same plus gcc, libc6-dev, git, make (what the
#                                            real image's buildpack-deps base has and the build
#                                            needs: glommio's build script runs git and cc),
#                                            this machine's Rust toolchain and cargo's registry
#                                            cache (CARGO_NET_OFFLINE: no crates.io from inside)
# The Dockerfile is used as committed, with only its two FROM image names replaced, on the
# committed tree (`git archive HEAD`). Then `cargo test --test container` runs with
# SG_TEST_IMAGE pointing at the result. Everything it made is removed at the end unless
# --keep is given.
#
# Needs root (debootstrap, chroot), debootstrap, docker, cargo; about 10 minutes on 2 cores
# and 2 GB of disk. Not part of ./scripts/test.
set -euo pipefail

die() {
    echo "check-dockerfile-offline: $*" >&2
    exit 1
}
step() { printf '\n==> %s\n' "$*"; }

keep=
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) die "usage: deploy/check-dockerfile-offline.sh [--keep]" ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot)"
for tool in debootstrap docker cargo rustc git; do
    command -v "$tool" >/dev/null || die "$tool is needed (debootstrap: apt-get install debootstrap)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/stategrid-standin.XXXXXX")
bases="stategrid-standin-debian:bookworm-slim stategrid-standin-rust:1-bookworm"

# The ids of images $@ and of every image built on them (the legacy builder keeps one per
# step, untagged), newest first, so that each can be removed after its children.
family() {
    local id p roots
    roots=" $(docker image inspect --format '{{.Id}}' "$@" 2>/dev/null | tr '\n' ' ') "
    for id in $(docker images --all --quiet --no-trunc | sort -u); do
        p=$id
        while [ -n "$p" ]; do
            case "$roots" in
                *" $p "*)
                    docker image inspect --format '{{.Created}} {{.Id}}' "$id"
                    break
                    ;;
            esac
            p=$(docker image inspect --format '{{.Parent}}' "$p")
        done
    done | sort -r | cut -d' ' -f2
}
cleanup() {
    if mountpoint -q "$work/rust/proc"; then umount "$work/rust/proc"; fi
    rm -rf "$work"
    if [ -z "$keep" ]; then
        local id
        # shellcheck disable=SC2086
        for id in $(family $bases); do
            # Removing a tagged image also removes its untagged parents: gone already is fine.
            docker rmi "$id" >/dev/null 2>&1 || true
        done
    fi
}
trap cleanup EXIT
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

step "debian:bookworm-slim stand-in (debootstrap --variant=minbase bookworm)"
debootstrap --variant=minbase bookworm "$work/slim" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $work/debootstrap.log"
tar -C "$work/slim" -c . | docker import --change "ENV PATH=$path" --change 'CMD ["bash"]' \
    - stategrid-standin-debian:bookworm-slim >/dev/null

step "rust:1-bookworm stand-in (gcc, git, make, $(rustc --version | cut -d' ' -f1-2), registry cache)"
cp -a "$work/slim" "$work/rust"
cp /etc/resolv.conf "$work/rust/etc/resolv.conf"
mount -t proc proc "$work/rust/proc"
chroot "$work/rust" apt-get install -y --no-install-recommends gcc libc6-dev git make ca-certificates \
    >"$work/apt.log" 2>&1 || die "apt-get install in the chroot failed; see $work/apt.log"
chroot "$work/rust" apt-get clean
umount "$work/rust/proc"
mkdir -p "$work/rust/usr/local/rust" "$work/rust/usr/local/cargo/registry"
tar -C "$(rustc --print sysroot)" --exclude=./share/doc -c . | tar -C "$work/rust/usr/local/rust" -x
(cd "$repo" && cargo fetch --locked >/dev/null) || die "cargo fetch failed"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
cp -a "$cargo_home/registry/cache" "$cargo_home/registry/index" "$work/rust/usr/local/cargo/registry/"
tar -C "$work/rust" -c . | docker import \
    --change "ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$path" \
    --change "ENV CARGO_HOME=/usr/local/cargo" --change "ENV CARGO_NET_OFFLINE=true" \
    --change 'CMD ["bash"]' - stategrid-standin-rust:1-bookworm >/dev/null
rm -rf "$work/slim" "$work/rust"

step "docker build (the committed Dockerfile; FROM names replaced by the stand-ins)"
mkdir -p "$work/context"
(cd "$repo" && git archive HEAD) | tar -C "$work/context" -x
sed -e 's#^FROM rust:1-bookworm #FROM stategrid-standin-rust:1-bookworm #' \
    -e 's#^FROM debian:bookworm-slim #FROM stategrid-standin-debian:bookworm-slim #' \
    "$work/context/Dockerfile" >"$work/context/Dockerfile.standin"
[ "$(grep -c '^FROM stategrid-standin-' "$work/context/Dockerfile.standin")" = 3 ] ||
    die "expected three FROM lines to replace in the Dockerfile"
start=$(date +%s)
(cd "$work/context" && DOCKER_BUILDKIT=0 docker build --force-rm -f Dockerfile.standin \
    -t stategrid-standin:runtime .) >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log"; die "docker build failed"; }
(cd "$work/context" && DOCKER_BUILDKIT=0 docker build --force-rm -f Dockerfile.standin \
    --target loadgen -t stategrid-standin:loadgen .) >>"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log"; die "docker build --target loadgen failed"; }
echo "built stategrid-standin:runtime and :loadgen in $(($(date +%s) - start)) s"
docker images stategrid-standin

step "container tests on the built image"
(cd "$repo" && SG_TEST_IMAGE=stategrid-standin:runtime SG_TEST_LOADGEN_IMAGE=stategrid-standin:loadgen \
    cargo test --release --locked --test container)
echo
echo "the Dockerfile builds, and its image passes tests/container.rs"
