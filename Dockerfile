# syntax=docker/dockerfile:1
#
# One image holds every Lethe binary: lethe-api, lethe-eraser, lethe-exporter, lethe-backup,
# lethe-retention, the sample seeder lethe-seed and the sample payment processor
# lethe-sample-processor. Each service chooses its command.
#
#   docker build -t lethe:local .
#   docker run --rm -v "$PWD/config:/etc/lethe:ro" lethe:local lethe-eraser
#
# The configuration is read from /etc/lethe/lethe.toml (LETHE_CONFIG); the image carries the
# sample one from config/, to be replaced by a mounted file in a real deployment. Any key can be
# overridden with a LETHE__SECTION__KEY environment variable.

FROM rust:1.95-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CARGO_TERM_COLOR=never \
    SQLX_OFFLINE=true
# The cargo caches survive between builds; the binaries are copied out of the cached target dir.
# Only the daemons and the seeder: the test harness's benchmark binary stays out of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p lethe-api -p lethe-eraser -p lethe-exporter -p lethe-backup -p lethe-retention -p lethe-sample \
    && mkdir -p /out \
    && for bin in lethe-api lethe-eraser lethe-exporter lethe-backup lethe-retention lethe-seed lethe-sample-processor; do \
           cp "target/release/$bin" /out/; \
       done \
    && ls -l /out

FROM debian:bookworm-slim
# Client tools of the stores, run by lethe-backup (dump, restore): their major versions follow
# Debian 12 (PostgreSQL 15, MariaDB 10.11, Redis 7). A newer PostgreSQL server needs the matching
# postgresql-client from apt.postgresql.org.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libssl3 curl postgresql-client mariadb-client redis-tools redis-server gnupg zstd \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/lethe --create-home lethe
COPY --from=builder /out/ /usr/local/bin/
COPY config/ /etc/lethe/
ENV LETHE_CONFIG=/etc/lethe/lethe.toml \
    LETHE__TELEMETRY__FORMAT=json
USER lethe
WORKDIR /var/lib/lethe
# api, eraser, exporter, backup, retention (each daemon's /healthz; the api also serves the API),
# and the sample processor's API.
EXPOSE 8080 9181 9182 9183 9184 8090
CMD ["lethe-api"]
