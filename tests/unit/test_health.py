"""The client routes of a service's HTTP server: the header and the Host checks."""
from __future__ import annotations

import http.client
import json

import pytest

from mallard.runtime.health import CLIENT_HEADER, HealthServer, host_allowed
from mallard.stack.processes import free_ports


@pytest.mark.parametrize("host", ["127.0.0.1:18082", "127.0.0.1", "localhost:18082", "[::1]:18082", "10.0.0.7:80",
                                  "applier:18082"])
def test_addresses_localhost_and_listed_names_are_allowed(host):
    assert host_allowed(host, frozenset({"applier"}))


@pytest.mark.parametrize("host", [None, "", "evil.example:18082", "rebind.attacker.test", "localhost.evil.example",
                                  "applier:18082"])
def test_other_names_are_refused(host):
    assert not host_allowed(host, frozenset())


@pytest.fixture
def server():
    port = free_ports(1)[0]
    s = HealthServer("127.0.0.1", port, lambda: {"ready": True},
                     routes={"/query": lambda params: (200, {"rows": [[params.get("sql")]]})}).start()
    yield port
    s.stop()


def _get(port: int, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", "/query?sql=SELECT+1", skip_host=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_a_client_request_with_a_local_host_is_answered(server):
    assert _get(server, {"Host": f"127.0.0.1:{server}", CLIENT_HEADER: "test"}) == (200, {"rows": [["SELECT 1"]]})


def test_a_request_without_the_header_is_refused(server):
    code, body = _get(server, {"Host": f"127.0.0.1:{server}"})
    assert code == 403 and CLIENT_HEADER in body["error"]


def test_a_rebound_dns_name_is_refused_even_with_the_header(server):
    code, body = _get(server, {"Host": f"rebind.attacker.test:{server}", CLIENT_HEADER: "x"})
    assert code == 403 and "rebind.attacker.test" in body["error"]


def test_healthz_stays_open_to_probes(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
