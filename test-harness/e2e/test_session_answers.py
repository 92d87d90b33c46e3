"""How the filter reads the validation service's answers, in real Envoy (two workers): role names
are values (never syntax), identity comes from one source, `expires_at` is read strictly, NoETL's
own answers for an unknown session and for a request it cannot read, and junk tokens can neither
flush the session cache nor put more than a bounded load on NoETL.

The validation stand-in gives each session here a canned answer (`POST /_control`), so every
answer NoETL might send can be played to the filter."""

import secrets
import time

import pytest
import yaml

from conftest import ValidationService, http
from test_envoy import bearer, hs_token
from test_sessions import config_with_validation, token

PAST = "2020-01-01 00:00:00+00"
USER = {"user_id": 50, "email": "svc@example.com", "display_name": "Svc", "roles": ["analyst"]}


@pytest.fixture(scope="module")
def service(tmp_path_factory, build):
    # One per build: the tests count its callouts per session.
    sessions = tmp_path_factory.mktemp("answers") / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({"n-valid": {"user_id": 60, "roles": ["analyst"]}}))
    svc = ValidationService(sessions)
    yield svc
    svc.stop()


def can(service, sid, body, status=200):
    service.control(answers={sid: {"status": status, "body": body}})


def valid(**fields):
    return {"status": "ok", "valid": True, "user": USER, "expires_at": None, "error": None, **fields}


@pytest.fixture(scope="module")
def venvoy(start_envoy, service):
    return start_envoy(config_with_validation(), clusters={"noetl_validation": service.port})


def get(envoy, sid, playbook="data/x", roles=("admin",)):
    return http(envoy.url + f"/api/catalog/{playbook}/ui_schema", headers=bearer(token(sid, roles)))


def junk():
    """A made-up opaque session token: 32 lowercase hex digits, as NoETL's look."""
    return secrets.token_hex(16)


# Item 3: role names are values.

def test_roles_with_syntax_never_reach_the_policy_or_the_upstream(venvoy, service):
    roles = ["viewer,admin", "analyst", "", "dev ops", "x" * 129, "ad\u0001min", "ad\u00a0min", 7]
    can(service, "r-roles", valid(user={**USER, "roles": roles}))
    before = venvoy.counter("roles_dropped")
    resp = get(venvoy, "r-roles")
    assert resp.status == 200, resp.body
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst"
    assert get(venvoy, "r-roles", "system/x").status == 403
    assert venvoy.counter("roles_dropped") - before == 7, "counted once, when the answer is read"


def test_roles_with_syntax_in_a_token_are_dropped_too(envoy):
    # Without a validation service the roles claim is the source.
    before = envoy.counter("roles_dropped")
    t = hs_token(["viewer,admin", "analyst", "admin\t"], sid="r-token")
    resp = http(envoy.url + "/api/catalog/data/x/ui_schema", headers=bearer(t))
    assert resp.status == 200, resp.body
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst"
    assert http(envoy.url + "/api/catalog/system/x/ui_schema", headers=bearer(t)).status == 403
    # Each worker verifies the token once; the count follows.
    assert 2 <= envoy.counter("roles_dropped") - before <= 4


# Item 4: identity from one source.

def test_identity_comes_from_the_service_alone(venvoy, service):
    can(service, "i-partial", valid(user={"user_id": 52, "roles": ["analyst"]}))
    resp = get(venvoy, "i-partial")  # the token names sub 42, ada@example.com, Ada Lovelace
    assert resp.status == 200, resp.body
    seen = resp.json()["headers"]
    assert seen["x-noetl-user-id"] == "52"
    assert "x-noetl-user-email" not in seen, "not the token's email beside the service's id"
    assert "x-noetl-user-name" not in seen


def test_a_valid_answer_without_a_user_is_malformed(venvoy, service):
    can(service, "i-nobody", valid(user={"email": "x@example.com", "roles": ["admin"]}))
    resp = get(venvoy, "i-nobody")
    assert resp.status == 503
    assert resp.json()["reason"] == "session_validation_unavailable"


# Item 5: the answer is read strictly.

@pytest.mark.parametrize("expires_at", [
    "2999-01-15 10:00:00+00", "2999-01-15 15:30:00.5+05:30", "2999-01-15 07:00:00-03", "2999-01-15T10:00:00Z",
    "2999-01-15 10:00:00", "infinity", 32_000_000_000, None,
])
def test_expires_at_in_every_accepted_form(venvoy, service, expires_at):
    sid = f"e-ok-{secrets.token_hex(4)}"
    can(service, sid, valid(expires_at=expires_at))
    assert get(venvoy, sid).status == 200


@pytest.mark.parametrize("expires_at", [1600000000.5, -5, "-infinity", "tomorrow", "1700000000", {}, True])
def test_any_other_expires_at_is_a_malformed_answer(venvoy, service, expires_at):
    sid = f"e-bad-{secrets.token_hex(4)}"
    can(service, sid, valid(expires_at=expires_at))
    resp = get(venvoy, sid)
    assert resp.status == 503, f"{expires_at!r} must not mean 'no expiry'"
    assert resp.headers["retry-after"] == "1"


@pytest.mark.parametrize("sid, body", [
    ("x-expired", valid(expires_at=PAST)),
    ("x-invalid-past", {"status": "ok", "valid": False, "user": None, "expires_at": PAST, "error": None}),
    ("x-noetl-unknown", {"status": "ok", "valid": False, "user": None, "expires_at": None, "error": None}),
])
def test_invalid_answers_are_401_and_asked_once(venvoy, service, sid, body):
    can(service, sid, body)
    for _ in range(5):
        resp = get(venvoy, sid)
        assert resp.status == 401
        assert resp.json()["reason"] == "invalid_session"
    assert service.calls(sid) == 1, "cached for negative_ttl_secs, whatever expires_at says"


def test_noetl_422_follows_the_failure_mode(venvoy, service):
    detail = {"detail": [{"loc": ["body", "session_token"], "msg": "field required", "type": "missing"}]}
    can(service, "x-422", detail, status=422)
    resp = get(venvoy, "x-422")
    assert resp.status == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["reason"] == "session_validation_unavailable"


# Item 6: junk cannot flush the cache.

def test_junk_tokens_never_evict_a_valid_session(start_envoy, service):
    config = config_with_validation(max_cold_callouts_per_sec=10_000)
    config["session"] = {"max_entries": 5, "max_negative_entries": 5}
    small = start_envoy(config, clusters={"noetl_validation": service.port})
    assert get(small, "n-valid").status == 200
    for _ in range(60):
        resp = http(small.url + "/api/catalog/data/x/ui_schema", headers={"X-Session-Token": junk()})
        assert resp.status == 401
    assert get(small, "n-valid").status == 200
    assert service.calls("n-valid") == 1, "the valid session stayed cached through 60 junk tokens"
    assert small.counter("invalid_sessions_evicted") == 55
    assert small.counter("sessions_evicted") == 0


def test_callouts_for_new_sessions_are_limited_per_worker(start_envoy, service):
    config = config_with_validation(max_cold_callouts_per_sec=2)
    limited = start_envoy(config, clusters={"noetl_validation": service.port})
    before = service.stats()["total"]
    started = time.monotonic()
    statuses = []
    for _ in range(40):
        resp = http(limited.url + "/api/catalog/data/x/ui_schema", headers={"X-Session-Token": junk()})
        statuses.append(resp.status)
        if resp.status == 503:
            assert resp.headers["retry-after"] == "1"
            assert resp.json() == {"error": "unavailable", "reason": "too_many_new_sessions"}
    elapsed = time.monotonic() - started
    asked = service.stats()["total"] - before
    # Two workers, each a burst of 2 and 2 more a second.
    assert statuses.count(401) == asked
    assert 2 <= asked <= 2 * (2 + 2 * elapsed) + 1, (asked, elapsed)
    assert statuses.count(503) == 40 - asked
    assert limited.counter("cold_callouts_limited") == 40 - asked
