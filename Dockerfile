# privacy-router: a release build on Debian bookworm, run as a non-root user.
#
#   docker build -t privacy-router .
#   docker run --rm privacy-router --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is compiled from source (bundled): the image has gcc, make,
# pkg-config, libssl-dev and zlib1g-dev already.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin privacy-router

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin privacy-router
COPY --from=build /src/target/release/privacy-router /usr/local/bin/privacy-router
COPY avro /etc/privacy-router/avro
COPY topology /etc/privacy-router/topology
WORKDIR /etc/privacy-router
USER privacy-router
EXPOSE 9464
ENV PRIVACY_ROUTER_METRICS_ADDR=0.0.0.0:9464 \
    PRIVACY_ROUTER_SCHEMAS=/etc/privacy-router/avro \
    PRIVACY_ROUTER_TOPOLOGY=/etc/privacy-router/topology/default.yaml
ENTRYPOINT ["privacy-router"]
CMD ["run"]
