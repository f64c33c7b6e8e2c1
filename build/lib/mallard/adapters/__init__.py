"""Thin adapters to Kafka, Postgres and DuckDB. Nothing connects at import time."""
