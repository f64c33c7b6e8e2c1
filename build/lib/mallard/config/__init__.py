"""Configuration: settings from MALLARD_* variables, the replication config and the connector config on disk."""
