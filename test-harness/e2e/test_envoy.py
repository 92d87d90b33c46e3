"""playbook-guard in real Envoy: the built .wasm, driven over HTTP.

Tokens are minted here with PyJWT, an implementation independent of the filter's, so these tests
also check that the filter accepts what other issuers produce.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from conftest import ROOT, SECRET, http, plugin_config

KEYS = ROOT / "filter" / "core" / "testdata"


def hs_token(roles, **claims):
    now = int(time.time())
    body = {"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": "42", "sid": "e2e-session",
            "email": "ada@example.com", "name": "Ada Lovelace", "roles": roles, "iat": now, "exp": now + 600}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


def rs_token(roles, alg="RS256", key="rsa.pem", kid="dev-rsa", **claims):
    now = int(time.time())
    body = {"iss": "https://dev-oidc.local/", "aud": "https://noetl/api", "sub": "auth0|7",
            "https://noetl.io/roles": roles, "iat": now, "exp": now + 600}
    body.update(claims)
    return jwt.encode(body, (KEYS / key).read_text(), algorithm=alg, headers={"kid": kid})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_allowed_request_reaches_upstream_with_identity_headers(envoy):
    resp = http(envoy.url + "/api/catalog/data/daily_load/ui_schema", headers=bearer(hs_token(["analyst"])))
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    assert seen["x-noetl-user-id"] == "42"
    assert seen["x-noetl-user-email"] == "ada@example.com"
    assert seen["x-noetl-user-name"] == "Ada Lovelace"
    assert seen["x-noetl-user-roles"] == "analyst"


def test_denied_request_gets_403_with_the_spec_body(envoy):
    resp = http(envoy.url + "/api/catalog/system/reset/ui_schema", headers=bearer(hs_token(["analyst"])))
    assert resp.status == 403
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "Permission denied", "playbook_path": "system/reset", "permission_type": "view"}
    developer = http(envoy.url + "/api/catalog/system/reset/ui_schema", headers=bearer(hs_token(["developer"])))
    assert developer.status == 403
    assert http(envoy.url + "/api/catalog/system/reset/ui_schema", headers=bearer(hs_token(["admin"]))).status == 200


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "missing_token"),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed"),
        (bearer(hs_token(["admin"], exp=int(time.time()) - 3600)), "expired"),
        (bearer(hs_token(["admin"], iss="https://elsewhere")), "unknown_issuer"),
        (bearer(hs_token(["admin"], aud="someone-else")), "invalid_audience"),
        (bearer(jwt.encode({"iss": "https://noetl.local", "exp": 4102444800}, "x" * 40, algorithm="HS256")),
         "bad_signature"),
        (bearer(rs_token(["admin"], key="rsa-other.pem")), "bad_signature"),
        (bearer(rs_token(["admin"], kid="unknown")), "unknown_key"),
    ],
)
def test_unauthenticated_requests_get_401_with_a_reason(envoy, headers, reason):
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=headers)
    assert resp.status == 401, resp.body
    assert resp.json() == {"error": "unauthenticated", "reason": reason}
    assert resp.headers["www-authenticate"].startswith('Bearer realm="playbook-guard"')
    if reason != "missing_token":
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]


def test_alg_none_is_refused(envoy):
    token = jwt.encode({"iss": "https://noetl.local", "aud": "noetl-gateway", "exp": 4102444800,
                        "roles": ["admin"]}, None, algorithm="none")
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(token))
    assert resp.status == 401
    assert resp.json()["reason"] == "unsupported_algorithm"


def test_public_routes_need_no_token(envoy):
    assert http(envoy.url + "/api/auth/login", method="POST", body="{}").status == 200
    assert http(envoy.url + "/health").status == 200
    assert http(envoy.url + "/not/routed").status == 403


def test_spoofed_identity_headers_are_removed(envoy):
    spoof = {"x-noetl-user-id": "1", "x-noetl-user-roles": "admin", "x-noetl-user-email": "root@evil"}
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers={**spoof, **bearer(hs_token(["analyst"]))})
    assert resp.status == 200
    seen = resp.json()["headers"]
    assert (seen["x-noetl-user-id"], seen["x-noetl-user-roles"]) == ("42", "analyst")
    assert seen["x-noetl-user-email"] == "ada@example.com"
    public = http(envoy.url + "/api/health", headers=spoof).json()["headers"]
    assert not any(name.startswith("x-noetl-user") for name in public)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_tokens_verify_through_the_inline_jwks(envoy, alg):
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(rs_token(["analyst"], alg=alg)))
    assert resp.status == 200, resp.body
    assert resp.json()["headers"]["x-noetl-user-id"] == "auth0|7"
    denied = http(envoy.url + "/api/catalog/system/x/ui_schema", headers=bearer(rs_token(["analyst"], alg=alg)))
    assert denied.status == 403


def test_a_secret_verifies_a_token_that_names_a_kid(envoy):
    # PyJWT, jose and Supabase put a `kid` on HS256 tokens; a secret has none (Envoy's jwt_authn
    # tries it all the same). A forged signature with the same kid is still refused.
    now = int(time.time())
    body = {"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": "42", "sid": "e2e-session",
            "roles": ["analyst"], "iat": now, "exp": now + 600}
    signed = jwt.encode(body, SECRET, algorithm="HS256", headers={"kid": "2026-11"})
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(signed))
    assert resp.status == 200, resp.body
    forged = jwt.encode(body, "another secret of at least thirty-two bytes", algorithm="HS256", headers={"kid": "2026-11"})
    refused = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(forged))
    assert (refused.status, refused.json()["reason"]) == (401, "bad_signature")


def test_token_from_session_header_and_cookie(envoy):
    token = hs_token(["viewer"])
    assert http(envoy.url + "/api/catalog/data/x/ui_schema", headers={"X-Session-Token": token}).status == 200
    assert http(envoy.url + "/api/catalog/data/x/ui_schema", headers={"Cookie": f"theme=dark; session_token={token}"}).status == 200
    assert http(envoy.url + "/api/catalog/data/x/ui_schema", headers={"Authorization": f"bearer {token}"}).status == 200


def test_playbook_from_json_body(body_envoy):
    headers = {**bearer(hs_token(["analyst"])), "content-type": "application/json"}
    body = json.dumps({"path": "data/daily_load", "args": {"day": "2026-11-25"}})
    resp = http(body_envoy.url + "/api/execute", method="POST", headers=headers, body=body)
    assert resp.status == 200, resp.body
    assert resp.json()["body"] == body, "the buffered body reaches the upstream intact"
    assert resp.json()["headers"]["x-noetl-user-id"] == "42"
    denied = http(body_envoy.url + "/api/execute", method="POST", headers=headers, body='{"path": "system/reset"}')
    assert denied.status == 403
    assert denied.json()["playbook_path"] == "system/reset"
    assert http(body_envoy.url + "/api/execute", method="POST", headers=headers, body="{}").status == 400


def test_playbook_from_graphql(body_envoy):
    headers = {**bearer(hs_token(["analyst"])), "content-type": "application/json"}
    query = "mutation Run($name: String!) { executePlaybook(name: $name) { id } }"
    ok = http(body_envoy.url + "/graphql", method="POST", headers=headers,
              body=json.dumps({"query": query, "variables": {"name": "data/x"}}))
    assert ok.status == 200, ok.body
    sneaky = 'mutation { a: executePlaybook(name: "data/x") { id } b: executePlaybook(name: "system/x") { id } }'
    denied = http(body_envoy.url + "/graphql", method="POST", headers=headers, body=json.dumps({"query": sneaky}))
    assert denied.status == 403
    assert denied.json()["playbook_path"] == "system/x"


def test_body_over_the_limit_is_413(body_envoy):
    headers = {**bearer(hs_token(["analyst"])), "content-type": "application/json"}
    body = json.dumps({"path": "data/x", "pad": "x" * (70 * 1024)})
    assert http(body_envoy.url + "/api/execute", method="POST", headers=headers, body=body).status == 413


@pytest.mark.parametrize(
    "path",
    ["/api/catalog/data/../system/x/ui_schema", "/api/catalog/data/%2e%2e/system/x/ui_schema",
     "/api/catalog//system/x/ui_schema", "/api/catalog/system%2Fx/ui_schema", "/api/auth/../catalog/system/x"],
)
def test_path_tricks_never_reach_a_system_playbook(envoy, path):
    resp = http(envoy.url + path, headers=bearer(hs_token(["analyst"])))
    assert resp.status in (400, 403), (path, resp.status, resp.body)


def test_cors_preflight_passes_without_a_token(envoy):
    resp = http(envoy.url + "/api/execute", method="OPTIONS",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert resp.status == 200


def test_stats_count_decisions(envoy):
    before = {name: envoy.counter(name) for name in ("allowed", "denied", "unauthenticated")}
    http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(hs_token(["analyst"])))
    http(envoy.url + "/api/catalog/system/x/ui_schema", headers=bearer(hs_token(["analyst"])))
    http(envoy.url + "/api/catalog/data/x/ui_schema")
    after = {name: envoy.counter(name) for name in before}
    assert {k: after[k] - before[k] for k in before} == {"allowed": 1, "denied": 1, "unauthenticated": 1}
    prometheus = http(envoy.admin + "/stats/prometheus").body
    assert "playbook_guard" in prometheus


def test_stats_of_remembered_allows_are_counted_by_the_time_they_are_answered(envoy):
    """Concurrent requests the workers answer from memory: /stats read right after the last
    answer counts every one of them."""
    url = envoy.url + "/api/catalog/data/burst/ui_schema"
    headers = bearer(hs_token(["analyst"], sid="e2e-burst"))
    assert http(url, headers=headers).status == 200, "decided in full, then remembered"
    names = ("allowed", "tokens_jwt")
    before = {name: envoy.counter(name) for name in names}
    n = 400
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: http(url, headers=headers).status, range(n)))
    assert statuses == [200] * n
    assert {name: envoy.counter(name) - before[name] for name in names} == {name: n for name in names}


def test_denials_are_logged_with_the_deciding_rule(envoy):
    http(envoy.url + "/api/catalog/system/logged/ui_schema", headers=bearer(hs_token(["developer"])))
    deadline = time.monotonic() + 5
    while "system/logged" not in envoy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in envoy.log().splitlines() if "system/logged" in line)
    assert "deny 403" in line and "roles.developer.deny[0]" in line


def test_audit_mode_lets_denials_through_and_counts_them(start_envoy):
    audit = start_envoy(plugin_config(mode="audit"))
    resp = http(audit.url + "/api/catalog/system/x/ui_schema", headers=bearer(hs_token(["analyst"])))
    assert resp.status == 200
    assert resp.json()["headers"]["x-noetl-user-id"] == "42"
    assert audit.counter("audit_would_deny") == 1


def test_envoy_refuses_a_bad_configuration(start_envoy):
    bad = plugin_config()
    bad["routes"].insert(0, {"match": {"prefix": "api/auth/"}, "public": True})
    envoy = start_envoy(bad, wait=False)
    code = envoy.wait_exit(timeout=60)
    assert code not in (None, 0), "Envoy must not start with a configuration the filter rejects"
    assert "routes[0].match.prefix" in envoy.log()


def test_envoy_refuses_a_short_secret(start_envoy, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "SECRET", "too-short")
    envoy = start_envoy(wait=False)
    assert envoy.wait_exit(timeout=60) not in (None, 0)
    assert "at least 32" in envoy.log()
