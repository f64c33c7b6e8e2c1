# One image for every mallard service in docker-compose (Kafka Connect runs Debezium).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Built from /src and run from /app: a `mallard` folder in the working directory would
# shadow the installed package (whose mallard.services and mallard.schemas come from
# the top-level folders).
COPY pyproject.toml README.md /src/
COPY mallard /src/mallard
COPY services /src/services
COPY schemas /src/schemas
COPY debezium /src/debezium
RUN pip install --no-cache-dir /src && rm -rf /src \
    && useradd --system --uid 10001 --home /app mallard \
    && mkdir -p /data && chown mallard /data
WORKDIR /app
COPY debezium ./debezium
COPY demo ./demo
USER mallard
CMD ["mallard", "--help"]
