"""The `resolver` in real Envoy: a `catalog_id` or `execution_id` is looked up through NoETL's
own API (the NoETL stand-in, behind cluster `noetl`) and decided as the playbook it names; one
lookup per id across Envoy's two workers, then served from the shared cache; a failed lookup
denies. The shipped profile is used as it is, with `resolver` added.

Without a resolver, the same requests need the permission on every playbook: that is
test_noetl_routes.py's `test_execute_by_catalog_id_needs_execute_on_every_playbook`."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import E2E, Envoy, http, plugin_config, refused_port
from test_envoy import bearer, hs_token

# The stand-in's catalog (noetl_upstream.CATALOG).
DAILY_LOAD, WEEKLY_REPORT, RESET, ROTATE_KEYS, HELLO = 101, 103, 201, 202, 301


@pytest.fixture(scope="module")
def noetl(build):
    # One per build: the tests count the lookups it serves.
    proc = subprocess.Popen([sys.executable, str(E2E / "noetl_upstream.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"

    def lookups(path_prefix):
        """The requests the filter's lookups made: they carry no identity headers."""
        return [s for s in http(url + "/_seen").json()
                if s["path"].startswith(path_prefix) and not s["identity"]]

    yield type("NoETL", (), {"port": port, "url": url, "lookups": staticmethod(lookups),
                             "ran": staticmethod(lambda: http(url + "/_ran").json())})
    proc.terminate()
    proc.wait(timeout=10)


def resolving(**resolver):
    return plugin_config(resolver={"cluster": "noetl", **resolver})


@pytest.fixture(scope="module")
def envoy(tmp_path_factory, noetl, build):
    # Two workers, the upstream and cluster `noetl` both the NoETL stand-in.
    proxy = Envoy(tmp_path_factory.mktemp("resolver"), resolving(), noetl.port, concurrency=2,
                  clusters={"noetl": noetl.port}, build=build).wait_ready()
    yield proxy
    proxy.stop()


def post(envoy, path, body, role):
    headers = {**bearer(hs_token([role])), "content-type": "application/json"}
    return http(envoy.url + path, method="POST", headers=headers, body=json.dumps(body))


def get(envoy, path, role):
    return http(envoy.url + path, headers=bearer(hs_token([role])))


def test_a_catalog_id_is_decided_as_the_entry_it_names(envoy, noetl):
    ran = post(envoy, "/api/execute", {"catalog_id": DAILY_LOAD, "path": "system/ignored"}, "analyst")
    assert ran.status == 200, ran.body
    assert ran.json()["path"] == "data/daily_load"
    # `path` says data/, the id says system/: NoETL would run the id's, so that is what is decided.
    denied = post(envoy, "/api/execute", {"catalog_id": str(RESET), "path": "data/daily_load"}, "analyst")
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/reset")
    assert post(envoy, "/api/execute", {"catalog_id": RESET}, "developer").status == 403
    assert post(envoy, "/api/execute", {"catalog_id": RESET}, "admin").status == 200
    # catalog/resource reads by id too.
    assert post(envoy, "/api/catalog/resource", {"catalog_id": str(ROTATE_KEYS)}, "developer").status == 403
    assert post(envoy, "/api/catalog/resource", {"catalog_id": str(HELLO)}, "developer").status == 200


def test_an_unknown_id_is_refused_and_an_odd_spelling_is_never_looked_up(envoy, noetl):
    unknown = post(envoy, "/api/execute", {"catalog_id": 999999}, "admin")
    assert (unknown.status, unknown.json()["reason"]) == (403, "unresolved_target")
    before = len(noetl.lookups("/api/catalog/resource"))
    # " 101 " is 101 to pydantic, but not the one spelling every reader agrees on: every playbook.
    odd = post(envoy, "/api/execute", {"catalog_id": f" {DAILY_LOAD} "}, "analyst")
    assert (odd.status, odd.json()["playbook_path"]) == (403, "*")
    assert len(noetl.lookups("/api/catalog/resource")) == before


def test_a_batch_looks_up_each_id_and_one_forbidden_item_refuses_it(envoy):
    ok = {"executions": [{"catalog_id": DAILY_LOAD}, {"catalog_id": WEEKLY_REPORT}, {"path": "data/daily_load"}]}
    assert post(envoy, "/api/execute/batch", ok, "analyst").status == 200
    bad = {"executions": [{"catalog_id": DAILY_LOAD}, {"catalog_id": RESET}]}
    denied = post(envoy, "/api/execute/batch", bad, "analyst")
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/reset")


def test_an_execution_id_in_the_url_is_decided_as_the_run_it_names(envoy, noetl):
    data_run = post(envoy, "/api/execute", {"path": "data/weekly_report"}, "analyst").json()["execution_id"]
    system_run = post(envoy, "/api/execute", {"path": "system/rotate_keys"}, "admin").json()["execution_id"]
    assert get(envoy, f"/api/executions/{data_run}", "analyst").status == 200
    assert get(envoy, f"/api/executions/{data_run}/status", "analyst").status == 200
    assert post(envoy, f"/api/executions/{data_run}/cancel", {}, "analyst").status == 200
    denied = post(envoy, f"/api/executions/{system_run}/cancel", {}, "analyst")
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/rotate_keys")
    assert get(envoy, f"/api/executions/{system_run}/events", "developer").status == 403
    assert get(envoy, f"/api/executions/{system_run}/events", "viewer").status == 200
    assert post(envoy, "/api/executions/123456789/cancel", {}, "admin").json()["reason"] == "unresolved_target"


def test_one_lookup_per_id_across_workers_then_the_cache(envoy, noetl):
    # An id no test has looked up yet: the entry the next register creates.
    register = {"content": "apiVersion: noetl.io/v2\nkind: Playbook\nmetadata:\n  path: data/fresh\n"}
    created = post(envoy, "/api/catalog/register", register, "admin")
    assert created.status == 200, created.body
    catalog_id = int(created.json()["catalog_id"])
    asked = lambda: noetl.lookups("/api/catalog/resource")  # noqa: E731
    before = len(asked())
    # A slow lookup, so that the requests overlap it.
    http(noetl.url + "/_delay", method="POST", body=json.dumps({"seconds": 0.5}))
    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            got = list(pool.map(lambda _: post(envoy, "/api/execute", {"catalog_id": catalog_id}, "analyst").status,
                                range(64)))
    finally:
        http(noetl.url + "/_delay", method="POST", body=json.dumps({"seconds": 0}))
    assert got == [200] * 64
    assert len(asked()) - before == 1, "one lookup for 64 concurrent requests over two workers"
    assert envoy.counter("lookup_waits") > 0, "requests waited for the one lookup"
    for _ in range(10):
        assert post(envoy, "/api/execute", {"catalog_id": catalog_id}, "analyst").status == 200
    assert len(asked()) - before == 1, "then served from the cache"
    assert envoy.counter("lookup_hits") > 0
    ran = [r for r in noetl.ran() if r["catalog_id"] == str(catalog_id)]
    assert len(ran) == 74 and {r["path"] for r in ran} == {"data/fresh"}


def test_a_lookup_that_cannot_be_made_denies(tmp_path_factory, noetl, build):
    # Cluster `noetl` points at a port that refuses connections.
    with refused_port() as dead:
        proxy = Envoy(tmp_path_factory.mktemp("resolver-down"), resolving(timeout_ms=500), noetl.port,
                      clusters={"noetl": dead}, build=build).wait_ready()
        try:
            down = post(proxy, "/api/execute", {"catalog_id": DAILY_LOAD}, "admin")
            assert (down.status, down.json()["reason"]) == (503, "lookup_unavailable")
            assert down.headers.get("retry-after") == "1"
            # A request that names its playbook needs no lookup.
            assert post(proxy, "/api/execute", {"path": "data/daily_load"}, "analyst").status == 200
            assert proxy.counter("lookup_failures") >= 1
        finally:
            proxy.stop()
