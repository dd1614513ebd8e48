# One multi-stage image per service: `docker build --build-arg SERVICE=query-service .`
# The build stage compiles the whole workspace once (cached); the runtime stage is a small,
# non-root Debian image with just the one binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p command-service -p projections -p process-manager -p query-service --bins \
    && mkdir -p /out && cp target/release/command-service target/release/projections target/release/process-manager target/release/query-service /out/

FROM debian:bookworm-slim AS runtime
ARG SERVICE
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home tally
COPY --from=build /out/${SERVICE} /usr/local/bin/service
USER 10001
ENTRYPOINT ["/usr/local/bin/service"]
