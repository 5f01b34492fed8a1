# hpsearch worker / dashboard image.
#   docker compose build            (see docker-compose.yml and the README)
# Torch comes from PyPI by default; pass --build-arg TORCH_INDEX_URL=<a PyTorch wheel index>
# to pick a CPU-only or a specific CUDA build instead.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.5,<3" "torchvision>=0.20,<1"; \
    fi
COPY pyproject.toml README.md ./
COPY studies ./studies
COPY hpsearch ./hpsearch
RUN pip install . && useradd --create-home hpsearch && mkdir /checkpoints \
    && chown hpsearch /checkpoints
USER hpsearch
WORKDIR /home/hpsearch

ENTRYPOINT ["hpsearch"]
CMD ["--help"]
