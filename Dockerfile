# pss-exporter container image. How to run it: docs/deployment.md.
#
# The base is pinned to an exact Python release and Debian release. It is not
# pinned by digest: no registry could be reached where this file was written.
# Add one in your build (docker buildx imagetools inspect IMAGE) and bump
# both together.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Builder: build the wheel and install it, with its dependencies, into a venv.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/pss-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" wheel --no-deps --wheel-dir dist . \
 && "$VIRTUAL_ENV/bin/pip" install dist/pss_exporter-*.whl \
 && "$VIRTUAL_ENV/bin/pip" uninstall --yes pip setuptools

# Final: the same Python plus the venv; no build steps, no compiler, no pip in
# the venv.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pss-exporter" \
      org.opencontainers.image.description="Prometheus exporter for per-group PSS/USS/RSS memory" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/pss-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/pss-exporter /opt/pss-exporter
# nobody:nogroup. Docker gives a non-root user none of the capabilities added
# with --cap-add (no ambient capabilities): to read other users' processes,
# run with --user 0 and only the needed capabilities (docs/deployment.md).
USER 65534:65534
EXPOSE 9778
# Plain HTTP on the default port: with --web.config.file (TLS, basic auth) or
# another --web.listen-address, override it (--health-cmd) or --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9778/healthz', timeout=4).status != 200)"]
# Host /proc and /sys mounted at /host: --path.procfs=/host/proc --path.sysfs=/host/sys
# Host PID namespace (--pid=host): no flags needed.
ENTRYPOINT ["pss-exporter"]
