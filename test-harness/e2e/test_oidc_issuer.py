"""The local OIDC issuer stand-in (oidc_issuer.py), then real Envoy verifying its tokens through
`remote_jwks`: a key rotated in under traffic, and roles from nested claims and a role_map
deciding a playbook."""

import json
import subprocess
import sys
import time
import urllib.request

import jwt
import pytest

from conftest import E2E, http
from oidc_issuer import SHAPES, OidcIssuer


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
