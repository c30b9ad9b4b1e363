# One image for all three services; docker-compose.yml picks the service with `command`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml requirements.lock README.md ./
COPY gen/ gen/
COPY seckill_common/ seckill_common/
COPY product_svc/ product_svc/
COPY activity_svc/ activity_svc/
COPY order_svc/ order_svc/
COPY seckill_cli/ seckill_cli/
# The healthcheck's health probe (`python -m seckill_stack.health`).
COPY seckill_stack/ seckill_stack/
COPY seckill_cluster/ seckill_cluster/
# Listed in pyproject.toml's packages, so `pip install .` needs it; it also puts
# seckill-bench in the image, to load the stack from inside its network.
COPY seckill_bench/ seckill_bench/

# pyproject.toml's runtime dependencies (cryptography among them, for MySQL 8's
# caching_sha2_password login over plain TCP) at requirements.lock's exact versions, the build
# backend included (PIP_CONSTRAINT, unlike -c, reaches pip's isolated build environment).
RUN PIP_CONSTRAINT=requirements.lock pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin seckill

USER seckill

# 50051 product, 50052 activity, 50053 order; 9464 the Prometheus metrics of
# SECKILL_METRICS_ADDR (one process per container in compose). No CMD: compose sets one per
# service, and the healthchecks run `python -m seckill_stack.health` from /app.
EXPOSE 50051 50052 50053 9464
