"""The local OIDC issuer stand-in (oidc_issuer.py), then real Envoy verifying its tokens through
`remote_jwks`: a key rotated in under traffic, and roles from nested claims and a role_map
deciding a playbook."""

import json
import subprocess
import sys
import threading
import time
import urllib.request

import jwt
import pytest
import yaml

from conftest import E2E, ROOT, http, plugin_config
from oidc_issuer import ENTRA_TENANT, SHAPES, OidcIssuer


def verify(issuer, token, **options):
    """`token` checked as a relying party would: discovery document, then its JWK Set."""
    doc = json.loads(urllib.request.urlopen(issuer.issuer + "/.well-known/openid-configuration", timeout=5).read())
    client = jwt.PyJWKClient(doc["jwks_uri"], cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=doc["id_token_signing_alg_values_supported"], issuer=doc["issuer"],
                      options={"verify_aud": False, **options})


@pytest.fixture()
def issuer():
    with OidcIssuer(path="/realms/noetl") as issuer:
        yield issuer


def test_discovery_document_and_key_set(issuer):
    doc = http(issuer.issuer + "/.well-known/openid-configuration").json()
    # OpenID Connect Discovery 1.0, section 3: the REQUIRED fields.
    for field in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
                  "subject_types_supported", "id_token_signing_alg_values_supported"):
        assert field in doc, field
    assert (doc["issuer"], doc["jwks_uri"]) == (issuer.issuer, issuer.url + "/realms/noetl/keys")
    assert issuer.issuer == issuer.url + "/realms/noetl" and issuer.jwks_uri == doc["jwks_uri"]
    keys = http(issuer.jwks_uri).json()["keys"]
    assert [(k["kty"], k["kid"], k["use"], k["alg"]) for k in keys] == [("RSA", issuer.kid, "sig", "RS256")]
    assert "d" not in keys[0], "the JWK Set publishes public keys only"
    assert issuer.hits(issuer.jwks_path) == 1 and issuer.hits(issuer.discovery_path) == 1
    assert http(issuer.url + "/admin/rotate", method="POST").status == 404, "admin endpoints are the script's"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_verifies_against_the_published_keys(issuer, shape):
    claims = verify(issuer, issuer.mint(shape, sub="u-1", lifetime=120))
    assert claims["iss"] == issuer.issuer and claims["sub"] == "u-1"
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(issuer.mint(shape))["kid"] == issuer.kid


def test_shapes_follow_each_idps_documentation(issuer):
    def claims(shape, **kw):
        return jwt.decode(issuer.mint(shape, **kw), options={"verify_signature": False})

    auth0 = claims("auth0", roles=["NoETL Analyst"])
    assert auth0["https://noetl.io/roles"] == ["NoETL Analyst"] and "noetl:api" in auth0["scope"].split()
    assert auth0["azp"] and auth0["aud"][0] == "https://noetl.example.com/api"
    okta = claims("okta", groups=["Everyone", "NoETL-Admins"])
    assert okta["groups"] == ["Everyone", "NoETL-Admins"] and isinstance(okta["scp"], list)
    assert okta["cid"] and okta["uid"] and "azp" not in okta
    entra = claims("entra", roles=["NoETL.Viewer"], groups=["5f1c0b8e-3d2a-4c6f-9b7e-1a2d3c4e5f60"])
    assert (entra["ver"], entra["scp"], entra["roles"]) == ("2.0", "access_as_user", ["NoETL.Viewer"])
    assert entra["tid"] and entra["azp"] and entra["groups"] == ["5f1c0b8e-3d2a-4c6f-9b7e-1a2d3c4e5f60"]
    cognito = claims("cognito", groups=["noetl-analysts"])
    assert cognito["cognito:groups"] == ["noetl-analysts"] and cognito["token_use"] == "access"
    assert "aud" not in cognito and cognito["client_id"]
    keycloak = claims("keycloak", roles=["analyst"], client_roles=["viewer"])
    assert "analyst" in keycloak["realm_access"]["roles"]
    assert keycloak["resource_access"]["noetl"]["roles"] == ["viewer"]
    assert keycloak["azp"] == "noetl-ui" and keycloak["preferred_username"]
    assert "azp" not in claims("keycloak", azp=None) and claims("keycloak", scope="openid")["scope"] == "openid"
    with pytest.raises(ValueError):
        issuer.mint("okta", roles=["admin"])  # Okta tokens carry groups, not roles


def test_rotate_publishes_beside_and_retire_removes(issuer):
    old_kid, old = issuer.kid, issuer.mint("keycloak")
    new_kid = issuer.rotate()
    assert issuer.kid == new_kid != old_kid
    assert [k["kid"] for k in http(issuer.jwks_uri).json()["keys"]] == [old_kid, new_kid]
    assert verify(issuer, old)["iss"] == issuer.issuer, "a token of the old key still verifies"
    assert jwt.get_unverified_header(issuer.mint("keycloak"))["kid"] == new_kid
    with pytest.raises(ValueError):
        issuer.retire(new_kid)
    issuer.retire(old_kid)
    assert [k["kid"] for k in http(issuer.jwks_uri).json()["keys"]] == [new_kid]
    with pytest.raises(jwt.PyJWKClientError):
        verify(issuer, old)


def test_delays_and_issuer_override(issuer):
    issuer.discovery_delay, issuer.jwks_delay = 0.4, 0.3
    issuer.discovery_issuer = "https://someone-else.example/"
    started = time.monotonic()
    assert http(issuer.issuer + "/.well-known/openid-configuration").json()["issuer"] == "https://someone-else.example/"
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    http(issuer.jwks_uri)
    assert time.monotonic() - started >= 0.3


def test_as_a_script_with_admin_endpoints():
    proc = subprocess.Popen([sys.executable, str(E2E / "oidc_issuer.py"), "--port", "0", "--path", "/realms/noetl"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("oidc issuer http://127.0.0.1:") and "/realms/noetl listening on" in line
        url = line.split()[-1]
        issuer = url + "/realms/noetl"
        token = http(url + "/admin/mint?shape=keycloak&sub=u-9&roles=analyst&client_roles=viewer", method="POST",
                     body=json.dumps({"sid": "demo-keycloak"})).body
        claims = jwt.decode(token, options={"verify_signature": False})
        assert (claims["iss"], claims["sub"], claims["sid"]) == (issuer, "u-9", "demo-keycloak")
        assert "analyst" in claims["realm_access"]["roles"]
        first = jwt.get_unverified_header(token)["kid"]
        rotated = http(url + "/admin/rotate", method="POST").json()["kid"]
        assert [k["kid"] for k in http(issuer + "/keys").json()["keys"]] == [first, rotated]
        assert http(url + "/admin/discovery?delay=0&issuer=https://other/", method="POST").status == 204
        assert http(issuer + "/.well-known/openid-configuration").json()["issuer"] == "https://other/"
        assert http(url + "/admin/discovery?issuer=", method="POST").status == 204
        assert http(issuer + "/.well-known/openid-configuration").json()["issuer"] == issuer
        assert http(url + "/admin/hits?path=/realms/noetl/keys").json() == {"hits": 1}
        assert http(url + "/admin/mint?shape=nope", method="POST").status == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ── Real Envoy: remote_jwks from the stand-in ─────────────────────────────────────────────────

ENTRA_ANALYSTS = "5f1c0b8e-3d2a-4c6f-9b7e-1a2d3c4e5f60"  # mapped to analyst in envoy/providers/entra.yaml


def example_provider(idp, issuer, cluster):
    """envoy/providers/<idp>.yaml with the stand-in as its issuer and key source."""
    provider = yaml.safe_load((ROOT / "envoy" / "providers" / f"{idp}.yaml").read_text())
    # The examples find their keys through discovery; here the set's own address is given
    # (test_oidc_discovery.py covers discovery).
    del provider["discovery"]
    provider.update(issuer=issuer.issuer, remote_jwks={"cluster": cluster, "uri": issuer.jwks_uri})
    return provider


@pytest.fixture(scope="module")
def idps(start_envoy):
    """Envoy (two workers, the default policy, roles from the token) with the Keycloak and Entra ID
    examples, each issued by a stand-in of its own; and when it became ready."""
    with OidcIssuer(path="/realms/noetl") as keycloak, OidcIssuer(path=f"/{ENTRA_TENANT}/v2.0") as entra:
        config = plugin_config()
        config["providers"] += [example_provider("keycloak", keycloak, "keycloak_jwks"),
                                example_provider("entra", entra, "entra_jwks")]
        envoy = start_envoy(config, clusters={"keycloak_jwks": keycloak.port, "entra_jwks": entra.port})
        yield envoy, time.monotonic(), keycloak, entra


def execute(envoy, token, playbook):
    resp = http(envoy.url + "/api/execute", method="POST", body=json.dumps({"path": playbook}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return resp.status, resp


def test_nested_keycloak_roles_decide_a_playbook(idps):
    envoy, _, keycloak, _ = idps
    # analyst only as a realm role, viewer only as a role of the `noetl` client: each reaches the
    # policy from its own pointer, and the realm's defaults are dropped on the way.
    token = keycloak.mint("keycloak", sub="kc-ada", roles=["analyst"], client_roles=["viewer"])
    status, resp = execute(envoy, token, "data/daily_load")
    assert status == 200, (resp.body, envoy.log())
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst,viewer"
    assert resp.json()["headers"]["x-noetl-user-id"] == "kc-ada"
    assert execute(envoy, token, "system/reset")[0] == 403  # analyst runs data/** only
    # view on system/ comes from the client role alone (viewer: view on every playbook).
    assert http(envoy.url + "/api/catalog/system/reset/ui_schema", headers={"Authorization": f"Bearer {token}"}).status == 200
    viewer = keycloak.mint("keycloak", client_roles=["viewer"])
    assert execute(envoy, viewer, "data/daily_load")[0] == 403


def test_a_mapped_entra_group_decides_a_playbook(idps):
    envoy, _, _, entra = idps
    # No app role: the only grant is a security group's GUID, which role_map makes analyst.
    token = entra.mint("entra", sub="entra-ada", groups=[ENTRA_ANALYSTS, "11111111-2222-3333-4444-555555555555"])
    status, resp = execute(envoy, token, "data/daily_load")
    assert status == 200, (resp.body, envoy.log())
    assert resp.json()["headers"]["x-noetl-user-roles"] == "analyst"
    status, resp = execute(envoy, token, "system/reset")
    assert status == 403 and resp.json()["playbook_path"] == "system/reset"
    unmapped = entra.mint("entra", groups=["11111111-2222-3333-4444-555555555555"])
    assert execute(envoy, unmapped, "data/daily_load")[0] == 403


def test_a_key_rotated_in_fails_no_request(idps):
    envoy, ready_at, keycloak, _ = idps
    url = envoy.url + "/api/catalog/data/daily_load/ui_schema"
    fetches = keycloak.hits(keycloak.jwks_path)
    statuses, stop = [], threading.Event()

    def old_key_traffic(token):
        while not stop.is_set():
            statuses.append(("old", http(url, headers={"Authorization": f"Bearer {token}"}).status))

    old = keycloak.mint("keycloak", roles=["analyst"])
    thread = threading.Thread(target=old_key_traffic, args=(old,))
    thread.start()
    try:
        # Each worker fetched the set as it was configured, and fetches again at most once per
        # 10 s: rotate once that window has passed, as an issuer's keys live for far longer.
        time.sleep(max(0.0, ready_at + 11 - time.monotonic()))
        assert keycloak.hits(keycloak.jwks_path) == fetches, "nothing refetched the set meanwhile"
        keycloak.rotate()
        new = keycloak.mint("keycloak", roles=["analyst"])
        assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
        for _ in range(12):  # whichever worker takes each: every one waits for its own refetch
            statuses.append(("new", http(url, headers={"Authorization": f"Bearer {new}"}).status))
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=15)
    refetches = keycloak.hits(keycloak.jwks_path) - fetches
    olds = sum(1 for kind, _ in statuses if kind == "old")
    print(f"key rotation: {olds} old-key and 12 new-key requests, {refetches} JWK Set refetches")
    assert olds > 50
    assert [s for s in statuses if s[1] != 200] == [], envoy.log()
    assert 1 <= refetches <= 2, "one refetch per worker at most"
