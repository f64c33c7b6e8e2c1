"""The Debezium connector config, shipped as package data (mallard.debezium)."""
