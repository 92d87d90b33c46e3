"""One reading of every request, in real Envoy (issue 9, items 1, 2, 7 and 8): a request that
could be read two ways is refused, identity headers are the filter's alone in every spelling,
a playbook name another decoder reads differently is refused, and a trailing slash does not
take a request to another route.

Requests go through http.client, which sends repeated headers as they are given (urllib would
fold them into one)."""

import http.client as httpclient
import json

import pytest
import yaml

from conftest import ROOT, ValidationService, http, plugin_config
from test_envoy import hs_token

HEADER_ROUTE = {"match": {"prefix": "/api/run/by-header"},
                "authorize": {"permission": "execute", "playbook": {"header": "x-playbook"}}}
AMBIGUOUS = {"error": "bad_request", "reason": "ambiguous_request"}
INVALID_NAME = {"error": "bad_request", "reason": "invalid_playbook_path"}


class Sent:
    def __init__(self, status, body):
        self.status = status
        self.body = body

    def json(self):
        return json.loads(self.body)


def send(envoy, method, path, headers=(), body=None):
    """`headers` is a list of (name, value) pairs, sent in order, repeats included."""
    conn = httpclient.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        data = body.encode() if isinstance(body, str) else body
        if data is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return Sent(resp.status, resp.read().decode())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, build):
    # One per build: the tests count its callouts per session.
    sessions = tmp_path_factory.mktemp("one-reading") / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({
        "one-admin": {"user_id": 1, "roles": ["admin"]},
        "one-analyst": {"user_id": 2, "roles": ["analyst"]},
        "one-logout-slash": {"user_id": 3, "roles": ["analyst"]},
        "one-logout-plain": {"user_id": 4, "roles": ["analyst"]},
    }))
    svc = ValidationService(sessions)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def oenvoy(start_envoy, service):
    """One route of each source kind (the core tests' table: these tests are about reading a
    request, not about NoETL's profile), logout first, a header-sourced route, public health, and
    the validation service."""
    config = plugin_config(hold_headers_for_body=True)
    config["validation"] = {"cluster": "noetl_validation", "timeout_ms": 1000}
    mechanisms = json.loads((ROOT / "filter" / "core" / "testdata" / "routes.json").read_text())
    config["routes"] = [HEADER_ROUTE, {"match": {"methods": ["POST"], "path": "/api/auth/logout"}, "logout": True},
                        *mechanisms, {"match": {"path": "/health"}, "public": True}]
    return start_envoy(config, clusters={"noetl_validation": service.port})


def token(sid):
    return hs_token(["analyst"], sid=sid)


def bearer(t):
    return [("Authorization", f"Bearer {t}")]


# Item 1: ambiguous requests.

def test_two_different_tokens_are_ambiguous_not_a_choice(oenvoy):
    admin, analyst = token("one-admin"), token("one-analyst")
    for headers in [
        [("Authorization", f"Bearer {analyst}"), ("Cookie", f"session_token={admin}")],
        [("X-Session-Token", admin), ("Authorization", f"Bearer {analyst}")],
        [("Cookie", f"session_token={analyst}; session_token={admin}")],
        [("Cookie", f"session_token={analyst}"), ("Cookie", f"a=1; session_token={admin}")],
        # Envoy joins these two into one `Bearer a,Bearer b`.
        [("Authorization", f"Bearer {analyst}"), ("Authorization", f"Bearer {admin}")],
        [("X-Session-Token", analyst), ("X-Session-Token", admin)],
    ]:
        resp = send(oenvoy, "GET", "/api/catalog/system/x", headers)
        assert (resp.status, resp.json()) == (400, AMBIGUOUS), headers
    # The same token twice is one token, and a Basic header is not a session token.
    for headers in [
        [("Authorization", f"Bearer {analyst}"), ("Cookie", f"session_token={analyst}")],
        [("Authorization", f"Bearer {analyst}"), ("Authorization", f"bearer {analyst}")],
        [("Authorization", "Basic Zm9vOmJhcg=="), ("X-Session-Token", analyst)],
    ]:
        assert send(oenvoy, "GET", "/api/catalog/data/x", headers).status == 200, headers


def test_a_playbook_header_sent_twice_is_ambiguous(oenvoy):
    auth = bearer(token("one-admin"))
    for values in [("data/x", "system/x"), ("data/x", "data/x")]:
        resp = send(oenvoy, "GET", "/api/run/by-header", auth + [("X-Playbook", v) for v in values])
        assert (resp.status, resp.json()) == (400, AMBIGUOUS), values
    assert send(oenvoy, "GET", "/api/run/by-header", auth + [("X-Playbook", "data/x")]).status == 200


@pytest.mark.parametrize("path, body", [
    ("/api/run/playbook", '{"path": "data/x", "path": "system/x"}'),
    ("/api/run/playbook", '{"path": "data/x", "p\\u0061th": "system/x"}'),
    ("/api/run/playbook", '{"path": "data/x", "workload": {"a": 1, "a": 2}}'),
    ("/graphql", json.dumps({"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }"})[:-1]
     + ', "variables": {"n": "data/x", "n": "system/x"}}'),
    ("/graphql", json.dumps({"query": 'mutation { executePlaybook(name: "data/x", name: "system/x") { id } }'})),
])
def test_bodies_with_two_readings_are_ambiguous(oenvoy, path, body):
    resp = send(oenvoy, "POST", path, bearer(token("one-analyst")), body)
    assert (resp.status, resp.json()) == (400, AMBIGUOUS)


def test_a_graphql_variable_is_read_as_graphql_reads_it(oenvoy):
    # `$ n` is the variable `n`: the analyst may not run system/x whatever `""` holds.
    body = json.dumps({"query": "mutation($n: String!) { executePlaybook(name: $ n) { id } }",
                       "variables": {"n": "system/x", "": "data/x"}})
    resp = send(oenvoy, "POST", "/graphql", bearer(token("one-analyst")), body)
    assert resp.status == 403, resp.body
    assert resp.json()["playbook_path"] == "system/x"


# Item 2: identity headers.

SPOOFED = [
    ("x_noetl_user_roles", "admin"),
    ("X-Noetl-User-Roles", "admin"),
    ("x-noetl-user-role", "admin"),
    ("x-noetl-user-is-admin", "true"),
    ("X_NOETL_USER_ID", "1"),
    ("x-noetl-user_email", "root@example.com"),
]


def spoofed_in(seen):
    return {k: v for k, v in seen.items() if k.replace("_", "-").lower().startswith("x-noetl-user-")}


def test_identity_headers_in_every_spelling_never_reach_the_upstream(oenvoy):
    # A public route and a CORS preflight: nothing is added, and nothing the client sent stays.
    for method, path, extra in [
        ("POST", "/api/auth/login", []),
        ("GET", "/health", []),
        ("OPTIONS", "/api/run/playbook", [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")]),
    ]:
        resp = send(oenvoy, method, path, SPOOFED + extra)
        assert resp.status == 200, (path, resp.body)
        assert spoofed_in(resp.json()["headers"]) == {}, path
    # An authorized route: only the filter's own four, with its values.
    resp = send(oenvoy, "GET", "/api/catalog/data/x", SPOOFED + bearer(token("one-analyst")))
    assert resp.status == 200, resp.body
    seen = spoofed_in(resp.json()["headers"])
    assert set(seen) <= {"x-noetl-user-id", "x-noetl-user-email", "x-noetl-user-name", "x-noetl-user-roles"}, seen
    assert (seen["x-noetl-user-id"], seen["x-noetl-user-roles"]) == ("2", "analyst")
    assert seen.get("x-noetl-user-email") != "root@example.com"


# Item 7: playbook names with another reading.

def test_playbook_names_another_decoder_reads_differently_are_refused(oenvoy):
    auth = bearer(token("one-admin"))
    for path in ["/api/catalog/data/%2541", "/api/catalog/data/a%20b", "/api/catalog/data/caf%C3%A9",
                 "/api/catalog/data/x:y"]:
        resp = send(oenvoy, "GET", path, auth)
        assert (resp.status, resp.json()) == (400, INVALID_NAME), path
    resp = send(oenvoy, "GET", "/api/catalog/data/%252e%252e/system/x", auth)
    assert (resp.status, resp.json()) == (400, {"error": "bad_request", "reason": "invalid_path"})
    for name in ["data/x%2e%2e", "data/x%41", "data/\\x", "data/é", "data/a b", " data/x"]:
        resp = send(oenvoy, "POST", "/api/run/playbook", auth, json.dumps({"path": name}))
        assert (resp.status, resp.json()) == (400, INVALID_NAME), name
    for name in ["data/x%2e%2e", "data/x+y"]:
        resp = send(oenvoy, "GET", "/api/run/by-header", auth + [("X-Playbook", name)])
        assert (resp.status, resp.json()) == (400, INVALID_NAME), name
    assert send(oenvoy, "GET", "/api/catalog/data/daily_load-v2.1", auth).status == 200


# Item 8: a trailing slash is the same route.

@pytest.mark.parametrize("sid, path", [("one-logout-slash", "/api/auth/logout/"),
                                       ("one-logout-plain", "/api/auth/logout")])
def test_logout_with_or_without_a_trailing_slash_evicts_the_session(oenvoy, service, sid, path):
    auth = bearer(token(sid))
    assert send(oenvoy, "GET", "/api/me", auth).status == 200
    assert send(oenvoy, "GET", "/api/me/", auth).status == 200
    assert service.calls(sid) == 1
    logouts = oenvoy.counter("logouts")
    assert send(oenvoy, "POST", path, auth, "{}").status == 200
    assert oenvoy.counter("logouts") == logouts + 1
    assert send(oenvoy, "GET", "/api/me", auth).status == 200
    assert service.calls(sid) == 2, "after logout the next request asks again"


def test_a_trailing_slash_does_not_skip_the_check(oenvoy):
    # Without a token, both spellings of a protected route are 401, not another route's answer.
    for path in ["/api/me", "/api/me/", "/graphql/"]:
        method = "POST" if path.startswith("/graphql") else "GET"
        resp = http(oenvoy.url + path, method=method, body="{}" if method == "POST" else None)
        assert resp.status == 401, path
