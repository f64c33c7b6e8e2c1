"""Prometheus metrics of a service, served in the text format at ``/metrics`` on its
health port (``mallard/runtime/health.py``).

Cheap on the hot path: counters are the totals a service keeps anyway (the applier's
``counts``, the publisher's ``published``...) and are read only when Prometheus
scrapes; histograms are observed once per batch or per snapshot, never per event.
Every metric is named ``mallard_*``; each service also exposes the usual ``process_*``
metrics (CPU, memory, open files) and ``mallard_errors_total`` / ``mallard_warnings_total``
(log lines at that level, whatever logged them).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (CollectorRegistry, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

disable_created_metrics()  # no *_created series: they double the lines and say nothing an operator uses

# Seconds: DuckDB batches take milliseconds to seconds; a snapshot seconds to hours.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
SNAPSHOT_BUCKETS = (0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class _LogLevelCounter(logging.Handler):
    """Counts the log lines at WARNING and above that reach the ``mallard`` logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts = {"warning": 0, "error": 0}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts["error" if record.levelno >= logging.ERROR else "warning"] += 1


_log_counter: _LogLevelCounter | None = None


def log_counter() -> _LogLevelCounter:
    """One per process, on the ``mallard`` logger (``logging.basicConfig(force=True)``
    replaces the root's handlers, not this one)."""
    global _log_counter
    if _log_counter is None:
        _log_counter = _LogLevelCounter()
        logging.getLogger("mallard").addHandler(_log_counter)
    return _log_counter


def _family(kind: type, name: str, doc: str, value: float | Mapping[tuple[str, ...], float],
            labels: tuple[str, ...]) -> Metric:
    family = kind(name, doc, labels=list(labels) if labels else None)
    if labels:
        for label_values, v in dict(value).items():  # type: ignore[arg-type]
            family.add_metric(list(label_values), v)
    else:
        family.add_metric([], value)
    return family


def counter(name: str, doc: str, value: float | Mapping[tuple[str, ...], float], labels: tuple[str, ...] = ()) -> Metric:
    """A counter family read at scrape time: ``value``, or label values -> value."""
    return _family(CounterMetricFamily, name, doc, value, labels)


def gauge(name: str, doc: str, value: float | Mapping[tuple[str, ...], float], labels: tuple[str, ...] = ()) -> Metric:
    """A gauge family read at scrape time, like ``counter``."""
    return _family(GaugeMetricFamily, name, doc, value, labels)


class _ScrapeTime:
    """A collector whose families are computed by callbacks when Prometheus scrapes."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterable[Metric]:
        for callback in self.callbacks:
            yield from callback()


class ServiceMetrics:
    """A registry of its own per service object (tests create several in one process)."""

    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self._scrape = _ScrapeTime()
        self.registry.register(self._scrape)
        self._logs = log_counter()
        self.on_scrape(self._common)

    def on_scrape(self, callback: Callable[[], Iterable[Metric]]) -> None:
        self._scrape.callbacks.append(callback)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Any:
        return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry)

    def _common(self) -> Iterable[Metric]:
        yield gauge("mallard_service_info", "The service this endpoint belongs to (always 1).", {(self.service,): 1},
                    ("service",))
        yield counter("mallard_errors", "Log lines at ERROR or above since the service started.", self._logs.counts["error"])
        yield counter("mallard_warnings", "Log lines at WARNING since the service started.", self._logs.counts["warning"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
