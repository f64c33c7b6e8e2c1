"""The operator commands behind the CLI: checks, status, verify, incremental state."""
