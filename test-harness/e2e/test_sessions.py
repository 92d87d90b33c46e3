"""The session cache and the validation callout in real Envoy (two workers), against the
harness's validation-service stand-in running as a real HTTP server."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import http, plugin_config
from test_envoy import bearer, hs_token

LOGOUT_ROUTE = {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": True}


def config_with_validation(**validation):
    config = plugin_config(hold_headers_for_body=True, opaque_tokens=True)
    config["validation"] = {"cluster": "noetl_validation", "timeout_ms": 500, **validation}
    if LOGOUT_ROUTE not in config["routes"]:
        config["routes"] = [LOGOUT_ROUTE, *config["routes"]]
    return config


@pytest.fixture(scope="module")
def venvoy(start_envoy, validation_service):
    return start_envoy(config_with_validation(), clusters={"noetl_validation": validation_service.port})


@pytest.fixture()
def service(validation_service):
    yield validation_service
    validation_service.control(mode="ok", delay_ms=0)


def token(sid, roles=("admin",)):
    # The token's roles claim says admin; with a validation service the service's roles count.
    return hs_token(list(roles), sid=sid)


def burst(url, headers, count, threads=8):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: http(url, headers=headers).status, range(count)))


def test_one_callout_per_session_under_concurrent_load(venvoy, service):
    statuses = burst(venvoy.url + "/api/catalog/data/x/ui_schema", bearer(token("s-burst-1")), 200)
    assert statuses == [200] * 200
    assert service.calls("s-burst-1") == 1, "200 concurrent requests on two workers, one callout"
    assert venvoy.counter("callouts") >= 1


def test_one_callout_per_session_for_many_fresh_sessions(venvoy, service):
    # Two workers racing for a fresh session is rare per burst, so one burst proves little: before
    # the claim re-read the cache, about 1 session in 25 here got a second callout.
    twice = {}
    for i in range(60):
        sid = f"s-many-{i}"
        assert burst(venvoy.url + "/api/catalog/data/x/ui_schema", bearer(token(sid)), 60, threads=16) == [200] * 60
        if service.calls(sid) != 1:
            twice[sid] = service.calls(sid)
    assert twice == {}, "sessions called out for more than once"


def test_roles_and_identity_come_from_the_service(venvoy, service):
    t = token("s-analyst")
    ok = http(venvoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(t))
    assert ok.status == 200
    seen = ok.json()["headers"]
    assert (seen["x-noetl-user-id"], seen["x-noetl-user-roles"]) == ("42", "analyst")
    denied = http(venvoy.url + "/api/catalog/system/x/ui_schema", headers=bearer(t))
    assert denied.status == 403, "the token says admin, the service says analyst"
    assert service.calls("s-analyst") == 1


def test_a_revoked_session_is_401_and_remembered(venvoy, service):
    for _ in range(5):
        resp = http(venvoy.url + "/docs", headers=bearer(token("s-revoked")))
        assert resp.status == 401
        assert resp.json()["reason"] == "invalid_session"
    assert service.calls("s-revoked") == 1


def test_bad_tokens_never_reach_the_service(venvoy, service):
    before = service.stats()["total"]
    expired = hs_token(["admin"], sid="s-analyst", exp=int(time.time()) - 3600)
    assert http(venvoy.url + "/docs", headers=bearer(expired)).status == 401
    assert http(venvoy.url + "/docs", headers=bearer(token("s-analyst") + "x")).status == 401
    assert service.stats()["total"] == before


def test_opaque_session_tokens(venvoy, service):
    resp = http(venvoy.url + "/api/catalog/data/x/ui_schema", headers={"X-Session-Token": "0cc175b9c0f1b6a831c399e269772661"})
    assert resp.status == 200
    assert resp.json()["headers"]["x-noetl-user-id"] == "45"


@pytest.mark.parametrize("mode", ["fail", "garbage", "slow"])
def test_failures_deny_with_503(venvoy, service, mode):
    service.control(mode=mode, delay_ms=1500)
    sid = {"fail": "s-burst-2", "garbage": "s-burst-3", "slow": "s-burst-4"}[mode]
    started = time.monotonic()
    resp = http(venvoy.url + "/docs", headers=bearer(token(sid)))
    assert resp.status == 503
    assert resp.headers["retry-after"] == "1"
    assert time.monotonic() - started < 1.4, "the callout timeout (500 ms) bounds the wait"


def test_logout_evicts_the_session(venvoy, service):
    t = token("s-developer")
    assert http(venvoy.url + "/docs", headers=bearer(t)).status == 200
    assert http(venvoy.url + "/docs", headers=bearer(t)).status == 200
    assert service.calls("s-developer") == 1
    assert http(venvoy.url + "/api/auth/logout", method="POST", headers=bearer(t), body="{}").status == 200
    assert http(venvoy.url + "/docs", headers=bearer(t)).status == 200
    assert service.calls("s-developer") == 2, "after logout the next request asks again"


def test_expiry_after_the_ttl_makes_one_more_callout(start_envoy, service):
    config = config_with_validation()
    config["session"] = {"ttl_secs": 1}
    short = start_envoy(config, clusters={"noetl_validation": service.port})
    url, headers = short.url + "/api/catalog/data/x/ui_schema", bearer(token("s-burst-5"))
    # Freshness is kept to the millisecond: a burst well inside the second sees one entry.
    assert burst(url, headers, 20) == [200] * 20
    assert service.calls("s-burst-5") == 1
    time.sleep(1.1)
    assert burst(url, headers, 50) == [200] * 50
    assert service.calls("s-burst-5") == 2, "one more callout after the TTL, however many ask"


def test_serve_stale_rides_out_an_outage(start_envoy, service):
    config = config_with_validation(failure_mode="serve_stale", stale_grace_secs=60)
    config["session"] = {"ttl_secs": 1}
    stale = start_envoy(config, clusters={"noetl_validation": service.port})
    url, headers = stale.url + "/api/catalog/data/x/ui_schema", bearer(token("s-burst-6"))
    assert http(url, headers=headers).status == 200
    service.control(mode="fail")
    time.sleep(1.2)
    assert burst(url, headers, 10) == [200] * 10
    assert stale.counter("stale_served") >= 1
    assert stale.counter("callout_failures") >= 1


def test_a_stats_window_loses_no_count(start_envoy, service):
    # A remembered allow's stats wait up to the window on the Wasm build (the native build counts
    # each at once); every one of them must reach the stats.
    config = config_with_validation()
    config["stats_window_ms"] = 300
    windowed = start_envoy(config, clusters={"noetl_validation": service.port})
    url, headers = windowed.url + "/api/catalog/data/x/ui_schema", bearer(token("s-burst-8"))
    assert burst(url, headers, 300) == [200] * 300
    assert service.calls("s-burst-8") == 1
    deadline = time.monotonic() + 5
    while windowed.counter("allowed") < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [windowed.counter(s) for s in ("allowed", "tokens_jwt")] == [300, 300]


def test_an_unknown_cluster_is_a_clear_503(start_envoy, service):
    config = config_with_validation()
    config["validation"]["cluster"] = "no_such_cluster"
    broken = start_envoy(config)
    resp = http(broken.url + "/docs", headers=bearer(token("s-burst-7")))
    assert resp.status == 503
    deadline = time.monotonic() + 5
    while "no_such_cluster" not in broken.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no_such_cluster" in broken.log()


def test_a_body_route_after_the_session(venvoy, service):
    headers = {**bearer(token("s-analyst")), "content-type": "application/json"}
    body = json.dumps({"path": "data/daily_load"})
    resp = http(venvoy.url + "/api/execute", method="POST", headers=headers, body=body)
    assert resp.status == 200
    assert resp.json()["body"] == body
    denied = http(venvoy.url + "/api/execute", method="POST", headers=headers, body='{"path": "system/x"}')
    assert denied.status == 403
