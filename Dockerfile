# syntax=docker/dockerfile:1
# kafka-anomaly-agent container image. No torch or transformers: the runtime installs the project
# without its "train" extra; models come as bundles made by `anomaly-agent train` elsewhere.
#
#   docker build -t kafka-anomaly-agent .                       # bundle mounted at run time
#   docker run -v "$PWD/bundle:/var/lib/anomaly-agent/bundle:ro" kafka-anomaly-agent
#   docker build --target bundled --build-context bundle=./bundle -t kafka-anomaly-agent:bundled .
#   docker build --target model-image --build-context bundle=./bundle -t kafka-anomaly-agent-model .
#     (the model-only image the Kubernetes init container copies from; see docs/operations.md)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/anomaly-agent
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY exporters ./exporters
COPY training ./training
# The project only, no extras: the runtime dependencies exclude torch and transformers.
RUN /opt/anomaly-agent/bin/pip install --no-compile . \
    && /opt/anomaly-agent/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kafka-anomaly-agent" \
      org.opencontainers.image.description="Real-time anomaly detection for text events on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 anomaly \
    && useradd --system --uid 10001 --gid anomaly --home-dir /var/lib/anomaly-agent --shell /usr/sbin/nologin anomaly \
    && install -d -o anomaly -g anomaly -m 0750 /var/lib/anomaly-agent /var/lib/anomaly-agent/bundle \
    && install -d -m 0755 /etc/anomaly-agent
COPY --from=build /opt/anomaly-agent /opt/anomaly-agent
COPY deploy/docker/agent.toml /etc/anomaly-agent/agent.toml
# In a container the listeners face the container network (the settings default to loopback).
ENV PATH=/opt/anomaly-agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    ANOMALY_AGENT_CACHE_DIR=/tmp/anomaly-agent-cache \
    ANOMALY_AGENT_METRICS__HOST=0.0.0.0 \
    ANOMALY_AGENT_HEALTH__HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/anomaly-agent
EXPOSE 9464 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# SIGTERM drains (finish or abort the in-flight transaction, commit): give `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["anomaly-agent"]
CMD ["run", "--config", "/etc/anomaly-agent/agent.toml"]

# The runtime with a bundle baked in: --build-context bundle=PATH names the bundle directory.
FROM runtime AS bundled
# hadolint ignore=DL3022
COPY --from=bundle --chown=10001:10001 . /var/lib/anomaly-agent/bundle/

# Only the bundle, for the Kubernetes init container (it runs `cp -R /bundle/. <emptyDir>`).
FROM busybox:1.36 AS model-image
# hadolint ignore=DL3022
COPY --from=bundle . /bundle/
USER 10001:10001
