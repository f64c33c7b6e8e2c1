"""The service runtime: the loop around a service, its health endpoint, logs and metrics."""
