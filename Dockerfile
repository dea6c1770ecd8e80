# llm-cache: the caching proxy as a container image (docs/deployment.md).
#
#   docker build -t llm-cache .
#   docker run -p 4000:4000 -v $PWD/examples/configs/fleet-redis.yaml:/etc/llm-cache/config.yaml:ro \
#     -e OPENAI_BASE_URL -e OPENAI_API_KEY -e REDIS_HOST -e REDIS_PORT -e REDIS_PASSWORD \
#     -e LITELLM_MASTER_KEY llm-cache
#
# Not exercised by CI: no container runtime is available where CI runs. Kept minimal.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llm-cache-proxy --bin llm-cache \
 && cp target/release/llm-cache /llm-cache

FROM debian:bookworm-slim
# CA roots for HTTPS upstreams and TLS to Redis; nothing else (rustls, no OpenSSL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin llm-cache
COPY --from=build /llm-cache /usr/local/bin/llm-cache
USER 10001
EXPOSE 4000
# SIGTERM drains within general_settings.shutdown_timeout (default 10 s): give the container
# runtime's stop timeout a little more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["llm-cache", "--version"]
ENTRYPOINT ["llm-cache"]
CMD ["serve", "--config", "/etc/llm-cache/config.yaml", "--host", "0.0.0.0", "--port", "4000"]
