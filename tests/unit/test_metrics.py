"""Prometheus metrics: the text parses, totals are read at scrape time, the health server serves them."""
import logging
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mallard.runtime.health import HealthServer
from mallard.runtime.metrics import ServiceMetrics, counter, gauge
from mallard.stack.processes import free_ports


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_totals_are_read_when_scraped_and_histograms_observed():
    m = ServiceMetrics("applier")
    counts = {"events": 0}
    m.on_scrape(lambda: [counter("mallard_events_applied", "Events.", counts["events"]),
                         gauge("mallard_consumer_lag_messages", "Lag.", {("t", "0"): 5}, ("topic", "partition"))])
    h = m.histogram("mallard_apply_batch_duration_seconds", "Batch.", (0.1, 1.0))
    before = samples(m.render().decode())
    assert before[("mallard_events_applied_total", ())] == 0
    assert before[("mallard_service_info", (("service", "applier"),))] == 1
    assert before[("mallard_consumer_lag_messages", (("partition", "0"), ("topic", "t")))] == 5
    counts["events"] = 40_000
    h.observe(0.05)
    h.observe(0.5)
    errors = before[("mallard_errors_total", ())]
    logging.getLogger("mallard.applier").error("a failure an operator should see")
    after = samples(m.render().decode())
    assert after[("mallard_events_applied_total", ())] == 40_000
    assert after[("mallard_apply_batch_duration_seconds_bucket", (("le", "0.1"),))] == 1
    assert after[("mallard_apply_batch_duration_seconds_count", ())] == 2
    assert after[("mallard_errors_total", ())] == errors + 1
    assert ("process_cpu_seconds_total", ()) in after
    assert not any(name.endswith("_created") for name, _ in after)


def test_two_services_in_one_process_do_not_collide():
    a, b = ServiceMetrics("a"), ServiceMetrics("b")
    a.histogram("mallard_x_seconds", "x", (1.0,))
    b.histogram("mallard_x_seconds", "x", (1.0,))
    assert b"mallard_x_seconds_count" in a.render() and b"mallard_x_seconds_count" in b.render()


def test_the_health_server_serves_metrics_as_prometheus_text():
    port = free_ports(1)[0]
    m = ServiceMetrics("scheduler")
    server = HealthServer("127.0.0.1", port, lambda: {"ready": True}, metrics=m.render).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert ("mallard_service_info", (("service", "scheduler"),)) in samples(resp.read().decode())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()
