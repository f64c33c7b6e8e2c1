"""What every service shares: ``--help`` from its settings, logging, signals, health."""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from pydantic_settings import BaseSettings

from mallard.runtime.health import HealthServer
from mallard.runtime.logs import configure
from mallard.runtime.metrics import ServiceMetrics, gauge
from mallard.config.settings import ServiceSettings


def settings_help(settings_cls: type[BaseSettings]) -> str:
    """One paragraph per field: env variable, default, description."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    lines = ["settings (environment variables):"]
    for name, field in settings_cls.model_fields.items():
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = "***"
        lines.append(f"  {prefix}{name.upper()}  (default: {default})")
        lines.append(f"      {field.description}")
    return "\n".join(lines)


class Service:
    """Base of a long-running service: ``run()`` blocks until ``stop()``."""

    name = "service"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.stopping = threading.Event()
        self.ready = False
        self.log = logging.getLogger(f"mallard.{self.name}")
        self.config_watch: Any = None
        """The replication config this service runs and watches (mallard.config.replication.ConfigWatch)."""
        self.metrics = ServiceMetrics(self.name)
        self.metrics.on_scrape(lambda: [gauge("mallard_ready", "1 when the service is ready (its /healthz answers 200).",
                                              1 if Service.state(self)["ready"] else 0)])

    def state(self) -> dict[str, Any]:
        state = {"service": self.name, "ready": self.ready and not self.stopping.is_set()}
        if self.config_watch is not None:
            state["config"] = self.config_watch.state()
        return state

    def routes(self) -> dict[str, Callable[[dict[str, str]], tuple[int, Any]]]:
        """Extra HTTP endpoints beside /healthz."""
        return {}

    def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()


def main(
    prog: str,
    summary: str,
    settings_cls: type[ServiceSettings],
    make_service: Callable[[Any], Service],
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=summary,
        epilog=settings_help(settings_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-format", choices=["text", "json"], default=None,
                        help="log lines as text or as JSON objects (default: MALLARD_LOG_FORMAT, else text)")
    args = parser.parse_args(argv)
    settings = settings_cls()
    if args.log_format:
        settings.log_format = args.log_format
    configure(settings.log_level, fmt=settings.log_format)
    from mallard.adapters import kafka

    kafka.use_client_config(settings.kafka_client_config())  # SASL/TLS for every client of the service
    service = make_service(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    health = (
        HealthServer(settings.health_host, settings.health_port, service.state, service.routes(),
                     service.metrics.render).start()
        if settings.health_port
        else None
    )
    try:
        service.run()
    except Exception as e:  # terminal: one line an operator can act on, then exit non-zero
        known = isinstance(e, (RuntimeError, ValueError, OSError))
        logging.getLogger(f"mallard.{service.name}").error("%s stopped: %s", service.name, e, exc_info=not known)
        return 1
    finally:
        if health:
            health.stop()
    return 0
