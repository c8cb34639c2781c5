# Offline stand-ins for the official postgres, redis, prom/prometheus and prom/alertmanager
# images, for machines without registry access (the end-to-end test, air-gapped hosts): one
# image with Debian bookworm's packages (PostgreSQL 15, Redis 7.0, Prometheus 2.42,
# Alertmanager 0.25), started as one of them by `local-service.sh NAME` (see offline.yaml).
#
#   docker build --network host --build-arg BASE_IMAGE=callannotate-base:bookworm-amd64 \
#     -f deploy/compose/local-services.Dockerfile -t callannotate-services:local deploy/compose
#
# The official images stay the default in compose.yaml; this one is selected by offline.yaml.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql-15 redis-server prometheus prometheus-alertmanager wget \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o redis -g redis -m 0750 /data \
    && install -d -o prometheus -g prometheus -m 0750 /prometheus /alertmanager

COPY local-service.sh /usr/local/bin/local-service
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/local-service"]
