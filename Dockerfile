# syntax=docker/dockerfile:1.7
# One image, two binaries: `extractor` and `loader` (run, migrate, replay, status, backfill).
#   docker build -t randomuser-etl .
#   docker run --rm randomuser-etl loader --help

# Must match rust-toolchain.toml (scripts/validate-deploy.sh checks it). The toolchain file itself
# is kept out of the context (.dockerignore): it would make rustup fetch rustfmt/clippy for nothing.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# librdkafka is compiled by rdkafka-sys (configure + make, perl) and links the system OpenSSL;
# cmake for aws-lc-sys where it needs it. Build stage only: none of it reaches the runtime image.
# Versions float with bookworm's security updates; the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake perl pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and compiled dependencies between builds, so a code
# change recompiles only the workspace crates. target/ lives in the cache, hence the copy out.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p extractor -p loader \
 && mkdir -p /out \
 && cp target/release/extractor target/release/loader /out/

FROM debian:12.11-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="randomuser-etl" \
      org.opencontainers.image.description="randomuser.me -> Kafka -> PostgreSQL + Parquet: extractor and loader" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:12.11-slim"
# ca-certificates: HTTPS to the API and TLS to brokers; libssl3: librdkafka's OpenSSL.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 etl \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin etl \
 && mkdir -p /app /data /logs \
 && chown 10001:10001 /data /logs \
 && ln -s /data /app/data \
 && ln -s /logs /app/logs
COPY --from=build /out/extractor /out/loader /usr/local/bin/
# The binaries' defaults DATA_DIR=data and LOG_DIR=logs resolve to /data and /logs through the
# symlinks above, so no setting has to be overridden in the image. No VOLUME: it would leave an
# anonymous volume behind every container; mount what should outlive one (compose, the chart).
WORKDIR /app
USER 10001:10001
# 2112 extractor, 2113 loader: /metrics, /health, /ready.
EXPOSE 2112 2113
# No ENTRYPOINT: the command names the binary. SIGTERM goes straight to it (PID 1), and both
# binaries handle it: drain, commit, exit.
CMD ["loader", "run"]
