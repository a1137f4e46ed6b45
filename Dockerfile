# mynah in a container: a build stage compiles the release binary, a slim stage runs it as a
# non-root user with data/ and models/ as volumes.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY src src
COPY migrations migrations
COPY data/sample data/sample
# The plots' font (DejaVu Sans) is compiled into the binary.
COPY assets assets
# The embedded base is compiled into the binary.
COPY models/base/mynah-base-s models/base/mynah-base-s
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin mynah \
    && mkdir -p /app/data /app/models \
    && chown -R mynah /app
COPY --from=build /src/target/release/mynah /usr/local/bin/mynah
WORKDIR /app
USER mynah
# The API listens on all interfaces inside the container, so it refuses to start without
# MYNAH_API_TOKEN (pass it with -e or an env file).
ENV DATABASE_URL=sqlite:///app/data/mynah.db \
    MYNAH_MODELS_DIR=/app/models \
    MYNAH_API_ADDR=0.0.0.0:3000
VOLUME ["/app/data", "/app/models"]
EXPOSE 3000
# `mynah health` asks the API's /healthz (no token needed, no data); the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["mynah", "health"]
ENTRYPOINT ["mynah"]
CMD ["run"]
