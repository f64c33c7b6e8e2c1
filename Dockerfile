# One image for every mallard service in docker-compose (the local stack's
# embedded-Debezium publisher is not needed here: Kafka Connect runs Debezium).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mallard ./mallard
COPY services ./services
COPY schemas ./schemas
COPY debezium ./debezium
COPY demo ./demo
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home /app mallard \
    && mkdir -p /data && chown mallard /data
USER mallard
CMD ["mallard", "--help"]
