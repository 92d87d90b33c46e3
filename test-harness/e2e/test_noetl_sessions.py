"""NoETL's own sessions through the shipped configuration, as `playbook-guard render` makes it,
in real Envoy in front of the validation-service stand-in.

NoETL's login creates sessions whose token is `md5(random()::text || clock_timestamp()::text)`
(32 lowercase hex characters); clients send it back as a Bearer token, as `X-Session-Token` or in
the `session_token` cookie. Only the validation service can vouch for such a token. JWTs from the
configured providers are verified in the filter first. Anything that is neither never reaches
NoETL.
"""

import base64
import json
import secrets

import pytest

from conftest import http, plugin_config
from test_envoy import bearer, hs_token

# A request every NoETL role may make once its session is valid, and one the viewer may not.
ALLOWED = "/api/catalog/data/daily_load/ui_schema"
DENIED = "/api/catalog/system/reset/ui_schema"


def login(service, **user):
    """A new NoETL session for `user`, issued by the stand-in as NoETL's login issues one."""
    resp = http(service.url + "/api/auth/login", method="POST", body=json.dumps(user))
    assert resp.status == 200, resp.body
    return resp.json()["session_token"]


def shipped(**overrides):
    """The shipped filter configuration with its validation service pointed at the stand-in."""
    config = plugin_config(with_validation=True)
    config["validation"]["cluster"] = "noetl_validation"
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def noetl(start_envoy, validation_service):
    return start_envoy(shipped(), clusters={"noetl_validation": validation_service.port})


def test_the_shipped_configuration_accepts_opaque_sessions():
    config = shipped()
    assert config["opaque_tokens"] is True
    assert config["opaque_token_shape"] == {"alphabet": "lower_hex", "min_length": 32, "max_length": 32}


@pytest.mark.parametrize("send", [
    lambda t: {"Authorization": f"Bearer {t}"},
    lambda t: {"X-Session-Token": t},
    lambda t: {"Cookie": f"theme=dark; session_token={t}"},
], ids=["bearer", "x-session-token", "cookie"])
def test_an_opaque_noetl_session_is_allowed_then_answered_from_the_cache(noetl, validation_service, send):
    token = login(validation_service, user_id=77, email="op@example.com", display_name="Op", roles=["viewer"])
    assert len(token) == 32
    before = noetl.counter("tokens_opaque")
    for _ in range(5):
        resp = http(noetl.url + ALLOWED, headers=send(token))
        assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    assert (seen["x-noetl-user-id"], seen["x-noetl-user-roles"]) == ("77", "viewer")
    assert validation_service.calls(token) == 1, "one callout, then the cache"
    assert http(noetl.url + "/api/execute", method="POST", headers={**send(token), "content-type": "application/json"},
                body=json.dumps({"path": "data/x"})).status == 403, "a viewer may not execute"
    assert noetl.counter("tokens_opaque") - before >= 6


def test_a_jwt_is_allowed(noetl, validation_service):
    resp = http(noetl.url + ALLOWED, headers=bearer(hs_token(["admin"], sid="noetl-analyst")))
    assert resp.status == 200, resp.body
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst", "the service's roles, not the token's"
    assert http(noetl.url + DENIED, headers=bearer(hs_token(["admin"], sid="noetl-analyst"))).status == 403
    assert noetl.counter("tokens_jwt") >= 2


def test_a_jwt_whose_session_the_service_revoked_is_401(noetl, validation_service):
    resp = http(noetl.url + ALLOWED, headers=bearer(hs_token(["admin"], sid="noetl-revoked")))
    assert resp.status == 401
    assert resp.json()["reason"] == "invalid_session"


def test_an_unknown_opaque_session_is_401_and_remembered(noetl, validation_service):
    unknown = secrets.token_hex(16)
    for _ in range(4):
        resp = http(noetl.url + ALLOWED, headers={"X-Session-Token": unknown})
        assert resp.status == 401
        assert resp.json()["reason"] == "invalid_session"
    assert validation_service.calls(unknown) == 1, "negatively cached after one callout"


NOT_NOETL_SHAPED = {
    "64-hex": secrets.token_hex(32),
    "uppercase-hex": secrets.token_hex(16).upper(),
    "base64": base64.b64encode(secrets.token_bytes(24)).decode(),
    "31-hex": secrets.token_hex(16)[:31],
    "junk": "let-me-in",
}


@pytest.mark.parametrize("name", sorted(NOT_NOETL_SHAPED))
def test_a_token_of_the_wrong_shape_is_401_without_a_callout(noetl, validation_service, name):
    token = NOT_NOETL_SHAPED[name]
    before_calls = validation_service.stats()["total"]
    before_count = noetl.counter("tokens_unrecognised")
    resp = http(noetl.url + ALLOWED, headers={"X-Session-Token": token})
    assert resp.status == 401
    assert resp.json()["reason"] == "malformed"
    assert "invalid_token" in resp.headers["www-authenticate"]
    assert validation_service.stats()["total"] == before_calls, "junk never reaches NoETL"
    assert noetl.counter("tokens_unrecognised") == before_count + 1


@pytest.mark.parametrize("shape, name", [
    ({"alphabet": "hex", "min_length": 32, "max_length": 64}, "64-hex"),
    ({"alphabet": "hex", "min_length": 32, "max_length": 32}, "uppercase-hex"),
    ({"alphabet": "base64", "min_length": 32, "max_length": 32}, "base64"),
])
def test_other_shapes_are_accepted_only_when_configured(start_envoy, validation_service, shape, name):
    token = NOT_NOETL_SHAPED[name]
    envoy = start_envoy(shipped(opaque_token_shape=shape), clusters={"noetl_validation": validation_service.port})
    try:
        before = validation_service.calls(token)
        resp = http(envoy.url + ALLOWED, headers={"X-Session-Token": token})
        # The stand-in does not know it: the service was asked, and said no.
        assert (resp.status, resp.json()["reason"]) == (401, "invalid_session")
        assert validation_service.calls(token) == before + 1
        # The NoETL shape is another shape now.
        assert http(envoy.url + ALLOWED, headers={"X-Session-Token": "let-me-in"}).json()["reason"] == "malformed"
    finally:
        envoy.stop()
