# hpsearch worker / dashboard image, for docker-compose.yml and deploy/kubernetes/.
#   docker compose build            (see docker-compose.yml and docs/workers.md)
#   docker build -t hpsearch:latest .
# Torch comes from PyPI by default (its Linux wheels carry CUDA, so one image serves CPU and
# GPU nodes); pass --build-arg TORCH_INDEX_URL=<a PyTorch wheel index> to pick a CPU-only or
# a specific CUDA build instead.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# tini as PID 1: it forwards SIGTERM to hpsearch (a pod's stop, so the running trial is
# failed and queued again) and reaps the worker processes' children; Python as PID 1 would
# do neither reliably.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.5,<3" "torchvision>=0.20,<1"; \
    fi
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY hpsearch ./hpsearch
# [s3]: boto3, for an s3:// artifact store. /artifacts is the artifact folder of
# docker-compose.yml; a named volume mounted there starts with this owner.
RUN pip install '.[s3]' \
    && useradd --uid 10001 --user-group --create-home hpsearch \
    && mkdir /artifacts && chown hpsearch:hpsearch /artifacts
# Numeric, so that Kubernetes' runAsNonRoot can check it (deploy/kubernetes sets the same ids).
USER 10001:10001
WORKDIR /home/hpsearch

# hpsearch dashboard --port 8080
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "hpsearch"]
CMD ["--help"]
