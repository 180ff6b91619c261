# aiproxy: one image for the all-in-one, the control plane and data planes.
#   docker build --build-arg AIPROXY_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) -t aiproxy .
#   docker run -p 8080:8080 -p 8090:8090 -v aiproxy-data:/data aiproxy
# The command picks the role: none (all-in-one), `controlplane`, `dataplane`.
# The health check probes the relay's readiness; a control-plane container
# overrides it with `aiproxy probe http://127.0.0.1:8090/readyz`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ARG AIPROXY_BUILD_COMMIT=unknown
# The console is embedded from the committed web/dist: no Node in the build.
ENV AIPROXY_BUILD_COMMIT=${AIPROXY_BUILD_COMMIT} AIPROXY_WEB_BUILD=0
RUN cargo build --release --locked --bin aiproxy \
    && install -D target/release/aiproxy /out/aiproxy \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
ARG AIPROXY_BUILD_COMMIT=unknown
LABEL org.opencontainers.image.title="aiproxy" \
      org.opencontainers.image.description="Relay for AI APIs: share a pool of upstream accounts among your users" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${AIPROXY_BUILD_COMMIT}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/aiproxy /usr/local/bin/aiproxy
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV AIPROXY_DATA_DIR=/data
VOLUME ["/data"]
# Proxy (clients), admin API and console, gRPC (data planes to the control plane).
EXPOSE 8080 8090 9090
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/aiproxy", "probe", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/aiproxy"]
