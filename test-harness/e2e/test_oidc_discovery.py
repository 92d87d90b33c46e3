"""OIDC discovery in real Envoy (issue 13): a provider with `discovery` finds its keys through the
issuer's discovery document, served by the local OIDC issuer stand-in (oidc_issuer.py)."""

import time

import pytest
import yaml

from conftest import ROOT, http, plugin_config
from oidc_issuer import KEYCLOAK_AUDIENCE, KEYCLOAK_CLIENT_ID, OidcIssuer
from test_envoy import bearer, hs_token

ALLOWED = "/api/catalog/data/x/ui_schema"
DENIED = "/api/catalog/system/x/ui_schema"


@pytest.fixture()
def issuer():
    with OidcIssuer(path="/realms/noetl") as issuer:
        yield issuer


def envoy_with_discovery(start_envoy, issuer, **discovery):
    """Envoy with a Keycloak-like provider whose keys come through discovery at `issuer`."""
    config = plugin_config()
    config["providers"].append({
        "name": "keycloak", "issuer": issuer.issuer, "audiences": [KEYCLOAK_AUDIENCE], "algorithms": ["RS256"],
        "authorized_parties": [KEYCLOAK_CLIENT_ID],
        "roles_claim": ["/realm_access/roles", "/resource_access/noetl/roles"],
        "discovery": {"cluster": "idp", **discovery},
    })
    return start_envoy(config, clusters={"idp": issuer.port})


def test_keys_are_found_through_discovery_at_start(start_envoy, issuer):
    envoy = envoy_with_discovery(start_envoy, issuer)
    # The first request after start waits for the document and then the set it names.
    token = issuer.mint("keycloak", sub="kc-1", client_roles=["analyst"])
    resp = http(envoy.url + ALLOWED, headers=bearer(token))
    assert resp.status == 200, (resp.status, resp.body, envoy.log())
    assert resp.json()["headers"]["x-noetl-user-id"] == "kc-1"
    assert http(envoy.url + DENIED, headers=bearer(token)).status == 403
    assert issuer.hits(issuer.discovery_path) >= 1 and issuer.hits(issuer.jwks_path) >= 1
    assert envoy.counter("discovery_fetch_success") >= 1 and envoy.counter("jwks_fetch_success") >= 1
    assert envoy.counter("discovery_fetch_refused") == 0


def test_a_document_for_another_issuer_is_refused(start_envoy, issuer):
    issuer.discovery_issuer = "http://127.0.0.1:1/realms/other"
    envoy = envoy_with_discovery(start_envoy, issuer)
    resp = http(envoy.url + ALLOWED, headers=bearer(issuer.mint("keycloak", client_roles=["analyst"])))
    assert resp.status == 401 and resp.json()["reason"] == "keys_unavailable", (resp.status, resp.body)
    # The set the document names is never fetched: nothing from it is trusted.
    assert issuer.hits(issuer.discovery_path) >= 1 and issuer.hits(issuer.jwks_path) == 0
    assert envoy.counter("discovery_fetch_refused") >= 1
    assert "http://127.0.0.1:1/realms/other" in envoy.log()


def test_the_first_requests_wait_for_a_slow_discovery(start_envoy, issuer):
    issuer.discovery_delay = 1.5
    envoy = envoy_with_discovery(start_envoy, issuer, timeout_ms=5000)
    token = issuer.mint("keycloak", client_roles=["analyst"])
    resp = http(envoy.url + ALLOWED, headers=bearer(token))
    assert resp.status == 200, (resp.status, resp.body, envoy.log())
    assert envoy.counter("jwks_waits") >= 1


def test_a_discovery_slower_than_its_timeout_is_a_401_not_a_hang(start_envoy, issuer):
    issuer.discovery_delay = 4.0
    envoy = envoy_with_discovery(start_envoy, issuer, timeout_ms=500)
    started = time.monotonic()
    resp = http(envoy.url + ALLOWED, headers=bearer(issuer.mint("keycloak", client_roles=["analyst"])))
    assert resp.status == 401 and resp.json()["reason"] == "keys_unavailable", (resp.status, resp.body)
    assert time.monotonic() - started < 4
    assert envoy.counter("discovery_fetch_failed") >= 1


def test_a_key_rotated_in_is_found_through_discovery_with_no_failed_request(start_envoy, issuer):
    envoy = envoy_with_discovery(start_envoy, issuer)
    started = time.monotonic()
    old = issuer.mint("keycloak", client_roles=["analyst"])
    assert http(envoy.url + ALLOWED, headers=bearer(old)).status == 200, envoy.log()
    documents = issuer.hits(issuer.discovery_path)
    # An issuer publishes a new key and signs with it. Past the refetch limit (10 s since the
    # last fetch), the first token of the new key waits for the document and the set again.
    time.sleep(max(0.0, started + 10.5 - time.monotonic()))
    issuer.rotate()
    new = issuer.mint("keycloak", client_roles=["analyst"])
    for _ in range(4):  # whichever worker takes it
        resp = http(envoy.url + ALLOWED, headers=bearer(new))
        assert resp.status == 200, (resp.status, resp.body, envoy.log())
    assert http(envoy.url + ALLOWED, headers=bearer(old)).status == 200
    assert issuer.hits(issuer.discovery_path) > documents


def test_an_idp_whose_sessions_noetl_does_not_hold_is_decided_by_its_token(start_envoy, issuer, validation_service):
    """Beside NoETL's own sessions (validated), an IdP's tokens with `validate_sessions: false`:
    no callout, the token's identity and roles decide."""
    config = plugin_config(with_validation=True)
    config["validation"]["cluster"] = "noetl_validation"
    provider = yaml.safe_load((ROOT / "envoy" / "providers" / "keycloak.yaml").read_text())
    provider.update(issuer=issuer.issuer, discovery={"cluster": "idp"}, validate_sessions=False)
    config["providers"].append(provider)
    envoy = start_envoy(config, clusters={"idp": issuer.port, "noetl_validation": validation_service.port})
    token = issuer.mint("keycloak", sub="kc-2", client_roles=["analyst"], sid="kc-session-2")
    resp = http(envoy.url + ALLOWED, headers=bearer(token))
    assert resp.status == 200, (resp.status, resp.body, envoy.log())
    assert resp.json()["headers"]["x-noetl-user-id"] == "kc-2"
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst"
    assert http(envoy.url + DENIED, headers=bearer(token)).status == 403
    assert envoy.counter("callouts") == 0 and envoy.counter("cache_misses") == 0
    assert validation_service.calls("kc-session-2") == 0
    # NoETL's own tokens, in the same Envoy, still go to the service, which vouches for none of
    # this one's session (a session of its own: other files count the shared service's calls).
    noetl = hs_token(["admin"], sid="oidc-unknown-session")
    resp = http(envoy.url + ALLOWED, headers=bearer(noetl))
    assert resp.status == 401 and resp.json()["reason"] == "invalid_session", (resp.status, resp.body)
    assert validation_service.calls("oidc-unknown-session") == 1 and envoy.counter("callouts") == 1
