#!/usr/bin/env bash
# Builds the stategrid container images without any image registry: `stategrid:local` (the
# server, the same image the Dockerfile's default target builds) and `stategrid-loadgen:local`.
#
# Why: `docker build .` starts FROM rust:1-bookworm and debian:bookworm-slim, which a machine
# with no registry cannot pull. This script builds the release binaries on this machine
# instead, assembles a root filesystem holding exactly the binaries, the shared libraries `ldd`
# lists for them (and the dynamic loader), /bin/sh for the entry point, a minimal /etc/passwd
# and /etc/group with the non-root user, /tmp and /var/log/stategrid, and `docker import`s it
# with the Dockerfile's settings. `docker import --change` cannot set a HEALTHCHECK, so a
# one-line Dockerfile FROM the imported base adds it (no registry: the base is local).
#
# Idempotent: the image carries a label with the hash of everything that went into it; when
# it matches, the script says so and does nothing (well under a second). Otherwise it takes a
# few seconds once the binaries exist; building them is the slow part.
#
# Keep the settings below in step with the Dockerfile's runtime and loadgen stages;
# tests/container.rs compares the two.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/offline-image.sh [--no-build] [--bin-dir DIR] [--tag NAME:TAG] [--no-loadgen]

  --no-build      use the binaries already in the bin dir (default: cargo build --release first)
  --bin-dir DIR   where the stategrid and loadgen binaries are
                  (default: ${CARGO_TARGET_DIR:-<repo>/target}/release)
  --tag NAME:TAG  the server image (default stategrid:local); the load generator's image is
                  NAME-loadgen:TAG (stategrid-loadgen:local)
  --no-loadgen    build the server image only
EOF
}

die() {
    echo "offline-image: $*" >&2
    exit 1
}

repo=$(cd "$(dirname "$0")/.." && pwd)
build=1
bin_dir=
tag=stategrid:local
loadgen=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build= ;;
        --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; bin_dir=$2; shift ;;
        --tag) [ $# -ge 2 ] || die "--tag needs NAME:TAG"; tag=$2; shift ;;
        --no-loadgen) loadgen= ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
case "$tag" in
    *:*) name=${tag%:*}; version=${tag##*:} ;;
    *) die "--tag must be NAME:TAG, got '$tag'" ;;
esac
base_tag="$name:$version-base"
loadgen_tag="$name-loadgen:$version"
bin_dir=${bin_dir:-${CARGO_TARGET_DIR:-$repo/target}/release}

# The image's user: a fixed numeric id, so that `runAsNonRoot` checks and volume ownership
# work without name look-ups. Same as the Dockerfile.
uid=10001
gid=10001
ports="2720/tcp 2720/udp 2721 2722 2723 2724 4000 4001"
path_env=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

command -v docker >/dev/null || die "docker is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "cannot reach the Docker daemon (is it running, and may this user use it?)"
for tool in ldd tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

start=$(date +%s.%N)
if [ -n "$build" ]; then
    echo "offline-image: cargo build --release -p stategrid -p loadgen --bins"
    (cd "$repo" && cargo build --release --locked -p stategrid -p loadgen --bins) ||
        die "cargo build failed"
fi
server_bin=$bin_dir/stategrid
loadgen_bin=$bin_dir/loadgen
[ -x "$server_bin" ] || die "no stategrid binary at $server_bin (build it, or drop --no-build)"
if [ -n "$loadgen" ]; then
    [ -x "$loadgen_bin" ] || die "no loadgen binary at $loadgen_bin (build it, or pass --no-loadgen)"
fi
shell_bin=$(readlink -f /bin/sh)

# The shared libraries a binary needs, with the dynamic loader: absolute paths, one a line.
libs_of() {
    local out
    out=$(ldd "$1" 2>&1) || {
        case "$out" in
            *"not a dynamic executable"*) return 0 ;;
            *) die "ldd $1 failed: $out" ;;
        esac
    }
    if grep -q "not found" <<<"$out"; then
        die "ldd $1: missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

server_libs=$( (libs_of "$server_bin"; libs_of "$shell_bin") | sort -u)
loadgen_libs=
[ -n "$loadgen" ] && loadgen_libs=$(libs_of "$loadgen_bin" | sort -u)

# Everything that goes into the images, hashed: equal hash, nothing to do.
server_sha=$(sha256sum "$server_bin" | cut -d' ' -f1)
# shellcheck disable=SC2086 # one path a word
inputs=$(sha256sum "$0" "$repo/deploy/docker-entrypoint.sh" "$server_bin" "$shell_bin" \
    ${loadgen:+"$loadgen_bin"} $server_libs $loadgen_libs | sha256sum | cut -d' ' -f1)

label_of() {
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}
if [ "$(label_of "$tag" io.stategrid.inputs)" = "$inputs" ] &&
    { [ -z "$loadgen" ] || [ "$(label_of "$loadgen_tag" io.stategrid.inputs)" = "$inputs" ]; }; then
    echo "offline-image: $tag${loadgen:+ and $loadgen_tag} up to date (stategrid sha256 $server_sha)"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/stategrid-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Copies a binary, its debug info stripped (backtraces keep function names), to $2.
install_bin() {
    mkdir -p "$(dirname "$2")"
    if command -v objcopy >/dev/null; then
        objcopy --strip-debug "$1" "$2"
    else
        cp "$1" "$2"
    fi
    chmod 0755 "$2"
}

# Assembles root filesystem $1 with the libraries in $2 and the user; then tars it, with
# everything owned by root except /var/log/stategrid, into $1.tar.
make_rootfs() {
    local root=$1 libs=$2 lib
    mkdir -p "$root"/{etc,tmp,usr/local/bin}
    chmod 1777 "$root/tmp"
    for lib in $libs; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nstategrid:x:%s:%s:stategrid:/nonexistent:/usr/sbin/nologin\n' \
        "$uid" "$gid" >"$root/etc/passwd"
    printf 'root:x:0:\nstategrid:x:%s:\n' "$gid" >"$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
}
tar_rootfs() {
    local root=$1 owned=$2
    tar --create --file "$root.tar" --directory "$root" --sort=name --mtime=@0 \
        --numeric-owner --owner=0 --group=0 ${owned:+--exclude="./$owned"} .
    if [ -n "$owned" ]; then
        tar --append --file "$root.tar" --directory "$root" --mtime=@0 \
            --numeric-owner --owner="$uid" --group="$gid" "./$owned"
    fi
}

# Imports $1.tar as $2 with the settings in the remaining arguments (one --change each).
import() {
    local tar=$1 image=$2
    shift 2
    local changes=()
    for c in "$@"; do changes+=(--change "$c"); done
    docker import "${changes[@]}" \
        --change "LABEL io.stategrid.inputs=$inputs" \
        --change "LABEL io.stategrid.binary.sha256=$server_sha" \
        --change "LABEL org.opencontainers.image.source=deploy/offline-image.sh" \
        --message "stategrid offline image (deploy/offline-image.sh)" \
        "$tar" "$image" >/dev/null
}

# Removes image $1 if re-tagging left it with no tag (and no container uses it).
drop_if_untagged() {
    [ -n "$1" ] || return 0
    if [ "$(docker image inspect --format '{{len .RepoTags}}' "$1" 2>/dev/null)" = 0 ]; then
        docker rmi "$1" >/dev/null 2>&1 || true
    fi
}

# --- the server image ---
old_server=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
root=$work/server
make_rootfs "$root" "$server_libs"
install_bin "$server_bin" "$root/usr/local/bin/stategrid"
mkdir -p "$root/bin" "$root/etc/stategrid" "$root/var/log/stategrid"
cp "$shell_bin" "$root/bin/sh"
install -m 0755 "$repo/deploy/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint"
tar_rootfs "$root" var/log/stategrid
# shellcheck disable=SC2016 # the JSON forms are literal
import "$root.tar" "$base_tag" \
    "ENV PATH=$path_env" \
    "ENV NO_COLOR=1" \
    "USER $uid:$gid" \
    "WORKDIR /" \
    "EXPOSE $ports" \
    'VOLUME ["/var/log/stategrid"]' \
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]' \
    'CMD ["serve"]' \
    "LABEL org.opencontainers.image.title=stategrid"
mkdir -p "$work/health"
cat >"$work/health/Dockerfile" <<EOF
FROM $base_tag
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/stategrid", "show"]
EOF
# (The legacy builder's deprecation notice is noise here: show the output only on failure.)
out=$(docker build --quiet --force-rm --tag "$tag" "$work/health" 2>&1) ||
    die "docker build of the health-check layer FROM $base_tag failed: $out"
docker rmi "$base_tag" >/dev/null # only the tag: the image is the new one's parent
new_server=$(docker image inspect --format '{{.Id}}' "$tag")
if [ "$old_server" != "$new_server" ]; then drop_if_untagged "$old_server"; fi

# --- the load generator's image ---
if [ -n "$loadgen" ]; then
    old_loadgen=$(docker image inspect --format '{{.Id}}' "$loadgen_tag" 2>/dev/null || true)
    root=$work/loadgen
    make_rootfs "$root" "$loadgen_libs"
    install_bin "$loadgen_bin" "$root/usr/local/bin/loadgen"
    tar_rootfs "$root" ""
    # shellcheck disable=SC2016
    import "$root.tar" "$loadgen_tag" \
        "ENV PATH=$path_env" \
        "ENV NO_COLOR=1" \
        "USER $uid:$gid" \
        "WORKDIR /tmp" \
        'ENTRYPOINT ["/usr/local/bin/loadgen"]' \
        'CMD ["--help"]' \
        "LABEL org.opencontainers.image.title=stategrid-loadgen"
    drop_if_untagged "$old_loadgen"
fi

elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
size=$(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')
echo "offline-image: built $tag ($size)${loadgen:+ and $loadgen_tag} in ${elapsed}s (stategrid sha256 $server_sha)"
