# stategrid container images.
#
#   docker build -t stategrid .                              # the server (default target)
#   docker build -t stategrid-loadgen --target loadgen .     # the load generator
#
#   docker run --net=host --security-opt seccomp=deploy/seccomp-io_uring.json \
#       --ulimit memlock=-1 stategrid
#
# Needs a registry for the two base images. Without one, deploy/offline-image.sh builds the
# same runtime image from binaries built on the host (tests/container.rs checks that the two
# declare the same settings). See README, 'Containers'.

# ---- build: release binaries of both programs, debug info stripped ----
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stategrid -p loadgen --bins \
 && mkdir -p /out \
 && strip --strip-debug -o /out/stategrid target/release/stategrid \
 && strip --strip-debug -o /out/loadgen target/release/loadgen

# ---- the load generator: `docker build --target loadgen .` ----
FROM debian:bookworm-slim AS loadgen
RUN groupadd --system --gid 10001 stategrid \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stategrid
COPY --from=builder /out/loadgen /usr/local/bin/loadgen
ENV NO_COLOR=1
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title=stategrid-loadgen
ENTRYPOINT ["/usr/local/bin/loadgen"]
CMD ["--help"]

# ---- the server (default target) ----
FROM debian:bookworm-slim AS runtime
# The non-root user gets a fixed numeric id, so that runAsNonRoot checks and the ownership
# of the log volume work without name look-ups.
RUN groupadd --system --gid 10001 stategrid \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stategrid \
 && mkdir -p /etc/stategrid /var/log/stategrid \
 && chown 10001:10001 /var/log/stategrid
COPY --from=builder /out/stategrid /usr/local/bin/stategrid
# Adds `--params /etc/stategrid/params.txt` when that file is mounted, and net_interface
# 0.0.0.0 unless the environment or the params file sets it; then execs stategrid (PID 1).
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
# Docker's log collector is not a terminal: plain text, no colour codes.
ENV NO_COLOR=1
USER 10001:10001
WORKDIR /
# 2720 tcp+udp management and discovery, 2721 clients, 2722 host-to-host, 2723-2724 TLS,
# 4000-4001 REST: ScaleOut's container ports. Served: 2720-2722, and 4001 (the HTTP data API,
# rest_port, set by the entrypoint).
EXPOSE 2720/tcp 2720/udp 2721 2722 2723 2724 4000 4001
VOLUME ["/var/log/stategrid"]
# The control program against this host (127.0.0.1:2721, or STATEGRID_HOST): healthy while
# the server answers. The first check runs after --interval (older Docker has no
# --start-interval), so a container turns healthy about 10 s after it starts.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/stategrid", "show"]
LABEL org.opencontainers.image.title=stategrid
ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]
CMD ["serve"]
