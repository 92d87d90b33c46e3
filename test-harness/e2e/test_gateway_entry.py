"""The gateway's entry points in real Envoy through the shipped profile (envoy/filter-config.yaml
+ policies/noetl-default.yaml): `/noetl/{*path}` and GraphQL `proxyRequest` decided as the NoETL
route the gateway forwards them to.

The upstream is the demo echo (it stands where the gateway would): a 200 with the echo means
the request reached it, and the echo shows the path and body it got."""

import json
import time
from http.client import HTTPConnection

import pytest

from conftest import http, plugin_config
from test_envoy import bearer, hs_token
from test_held_head import eager, envoys, probes_seen  # noqa: F401 (fixtures)

ROLES = ("admin", "developer", "analyst", "viewer")


def send(envoy, method, path, role, body=None):
    headers = bearer(hs_token([role]))
    if body is not None:
        headers["content-type"] = "application/json"
        body = body if isinstance(body, str) else json.dumps(body)
    return http(envoy.url + path, method=method, headers=headers, body=body)


def statuses(call):
    return {role: call(role).status for role in ROLES}


def expect(admin, developer, analyst, viewer):
    return {"admin": admin, "developer": developer, "analyst": analyst, "viewer": viewer}


def reason(resp):
    return resp.json().get("reason")


def proxy_request(method, endpoint, body=None, alias="p"):
    """One `proxyRequest` call as the gateway's clients write it, the body a GraphQL literal."""
    arg = f", body: {body}" if body is not None else ""
    return f'{alias}: proxyRequest(input: {{method: "{method}", endpoint: "{endpoint}"{arg}}}) {{ success data }}'


def graphql(*calls, variables=None):
    return {"query": "mutation { " + " ".join(calls) + " }", "variables": variables or {}}


def test_execute_through_the_pass_through_is_decided_on_its_body(body_envoy):
    ok = send(body_envoy, "POST", "/noetl/execute", "analyst", {"path": "data/daily_load"})
    assert ok.status == 200, ok.body
    echo = ok.json()
    assert (echo["path"], echo["body"]) == ("/noetl/execute", json.dumps({"path": "data/daily_load"}))
    denied = send(body_envoy, "POST", "/noetl/execute", "analyst", {"path": "system/reset"})
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/reset")
    # The query string is NoETL's too, and names no playbook.
    assert send(body_envoy, "POST", "/noetl/execute?path=data/x", "analyst", {"path": "system/x"}).status == 403


def test_the_pass_through_reaches_each_class_of_route(envoy):
    run = {"path": "data/x"}
    assert statuses(lambda r: send(envoy, "POST", "/noetl/execute", r, run)) == expect(200, 200, 200, 403)
    sql = {"query": "select 1"}
    assert statuses(lambda r: send(envoy, "POST", "/noetl/postgres/execute", r, sql)) == expect(200, 403, 403, 403)
    assert reason(send(envoy, "POST", "/noetl/postgres/execute", "developer", sql)) == "restricted"
    for role in ROLES:
        blocked = send(envoy, "POST", "/noetl/internal/outbox/claim", role, {})
        assert (blocked.status, reason(blocked)) == (403, "blocked"), role
        unmapped = send(envoy, "GET", "/noetl/nothing/here", role)
        assert (unmapped.status, reason(unmapped)) == (403, "no_route"), role
    ui_schema = "/noetl/catalog/system/x/ui_schema"
    assert statuses(lambda r: send(envoy, "GET", ui_schema, r)) == expect(200, 403, 403, 200)
    assert statuses(lambda r: send(envoy, "GET", "/noetl/executions", r)) == expect(200, 403, 403, 200)
    # Public and session-only NoETL routes stay so behind the pass-through.
    login = http(envoy.url + "/noetl/auth/login", method="POST", headers={"content-type": "application/json"},
                 body="{}")
    assert login.status == 200, login.body
    validate = "/noetl/auth/session/validate"
    assert statuses(lambda r: send(envoy, "POST", validate, r, {})) == expect(200, 200, 200, 200)
    assert http(envoy.url + "/noetl/execute", method="POST", body='{"path": "data/x"}',
                headers={"content-type": "application/json"}).status == 401


def test_spellings_the_gateway_or_noetl_could_read_another_way_are_refused(envoy):
    body = {"path": "data/x"}
    for path, why in (
        ("/noetl/catalog/system%2Fx/ui_schema", "ambiguous_request"),  # axum decodes it into a slash
        ("/noetl/ex%2565cute", "ambiguous_request"),  # a `%` NoETL would decode once more
        ("/noetl/catalog/data%252f..%252fsystem/ui_schema", "invalid_path"),  # `..` after two decodings
    ):
        resp = send(envoy, "POST", path, "admin", body)
        assert (resp.status, reason(resp)) == (400, why), (path, resp.body)


def test_what_envoy_normalises_is_decided_as_forwarded(envoy):
    # Envoy (normalize_path, merge_slashes) resolves dot segments, `//` and `%65` before the
    # filter, and forwards the path it resolved: the filter decides what the gateway gets.
    for path in ("/noetl/data/../postgres/execute", "/noetl/data/%2e%2e/postgres/execute", "/noetl/./postgres/execute"):
        resp = send(envoy, "POST", path, "analyst", {"query": "select 1"})
        assert (resp.status, reason(resp)) == (403, "restricted"), (path, resp.body)
    for path in ("/noetl/data/../execute", "/noetl/data/%2E%2E/execute", "/noetl/%65xecute", "/noetl//execute"):
        denied = send(envoy, "POST", path, "analyst", {"path": "system/x"})
        assert (denied.status, denied.json()["playbook_path"]) == (403, "system/x"), path
        ok = send(envoy, "POST", path, "analyst", {"path": "data/x"})
        assert (ok.status, ok.json()["path"]) == (200, "/noetl/execute"), (path, ok.body)


def test_proxy_request_is_decided_as_the_route_it_reaches(body_envoy):
    allowed = graphql(proxy_request("POST", "/api/execute", '{path: "data/daily_load"}'))
    ok = send(body_envoy, "POST", "/graphql", "analyst", allowed)
    assert ok.status == 200, ok.body
    assert json.loads(ok.json()["body"]) == allowed
    denied = send(body_envoy, "POST", "/graphql", "analyst",
                  graphql(proxy_request("POST", "/api/execute", '{path: "system/reset"}')))
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/reset")
    # `input` from a variable, the method in any ASCII case.
    by_variable = {"query": "mutation($i: ProxyRequestInput!) { proxyRequest(input: $i) { success } }",
                   "variables": {"i": {"method": "post", "endpoint": "/api/postgres/execute",
                                       "body": {"query": "select 1"}}}}
    assert statuses(lambda r: send(body_envoy, "POST", "/graphql", r, by_variable)) == expect(200, 403, 403, 403)


def test_one_forbidden_proxy_request_refuses_the_whole_document(envoy):
    calls = [proxy_request("POST", "/api/execute", '{path: "data/a"}', alias="a"),
             proxy_request("POST", "/api/execute", '{path: "system/b"}', alias="b"),
             'executePlaybook(name: "data/c") { id }']
    denied = send(envoy, "POST", "/graphql", "analyst", graphql(*calls))
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/b")
    assert send(envoy, "POST", "/graphql", "analyst", graphql(calls[0], calls[2])).status == 200
    batch = [graphql(calls[0]), graphql(proxy_request("POST", "/api/internal/outbox/claim", "{}"))]
    refused = send(envoy, "POST", "/graphql", "admin", batch)
    assert (refused.status, reason(refused)) == (403, "blocked")


@pytest.mark.parametrize("method,endpoint", [
    ("POST", "/api/x/../postgres/execute"),
    ("POST", "/api/%2e%2e/postgres/execute"),
    ("POST", "/api/%65xecute"),
    ("POST", "api/execute"),
    ("POST", "@other-host/api/execute"),
    ("POST", "/api/execute#x"),
    ("PO\\u017fT", "/api/execute"),
])
def test_proxy_requests_with_another_reading_are_refused(envoy, method, endpoint):
    resp = send(envoy, "POST", "/graphql", "admin", graphql(proxy_request(method, endpoint, '{path: "data/x"}')))
    assert (resp.status, reason(resp)) == (400, "ambiguous_request"), resp.body


def test_a_pass_through_reached_from_a_pass_through_is_refused(envoy):
    for endpoint in ("/noetl/execute", "/graphql"):
        resp = send(envoy, "POST", "/graphql", "admin", graphql(proxy_request("POST", endpoint, '{path: "data/x"}')))
        assert (resp.status, reason(resp)) == (403, "pass_through"), (endpoint, resp.body)


def post_slowly(url, path, playbook, probe, pause=0.5):
    """POST `path` with the head first and the body `pause` seconds later; the status."""
    body = json.dumps({"path": playbook}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", path)
        for name, value in (*bearer(hs_token(["analyst"])).items(), ("content-type", "application/json"),
                            ("content-length", str(len(body))), ("x-probe", probe)):
            conn.putheader(name, value)
        conn.endheaders()
        time.sleep(pause)
        conn.send(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_the_pass_through_holds_the_head_until_the_body_is_decided(envoys, eager):
    """Through `/noetl/execute` as through `/api/execute`: an upstream that answers on the head
    alone never sees a request the filter denies on its body."""
    envoy = envoys(plugin_config())
    assert post_slowly(envoy.url, "/noetl/execute", "system/reset", "gw-denied") == 403
    assert "gw-denied" not in probes_seen(eager), "the upstream saw the head of a denied request"
    assert post_slowly(envoy.url, "/noetl/execute", "data/daily_load", "gw-allowed") == 200
    (seen,) = [e for e in eager.seen() if e.get("probe") == "gw-allowed"]
    assert seen["identity"]["x-noetl-user-id"] == "42"
