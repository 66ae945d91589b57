# keywatch in a container: built with the Rust toolchain, run on a slim
# Debian with only the shared libraries librdkafka needs.

FROM rust:1-bookworm AS build
# librdkafka is compiled from source by rdkafka-sys: a C toolchain, OpenSSL
# headers (TLS to the brokers) and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
COPY models ./models
COPY schemas ./schemas
# The dist profile: release with link-time optimisation across crates.
RUN cargo build --profile dist --locked --bin keywatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 keywatch
COPY --from=build /src/target/dist/keywatch /usr/local/bin/keywatch
USER keywatch
ENTRYPOINT ["/usr/local/bin/keywatch"]
CMD ["run", "--config", "/etc/keywatch/keywatch.toml"]
