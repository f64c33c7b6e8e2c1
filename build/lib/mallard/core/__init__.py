"""Pure logic: no Kafka, Postgres or DuckDB client is imported here (a test checks)."""
