"""Remote JWK Sets (SPEC section 3): fetched through an Envoy cluster, cached, and fetched again
for a key the set does not have yet (rate-limited)."""

import base64
import json
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import http, plugin_config
from test_envoy import KEYS, bearer


def public_jwk(pem_file, kid):
    key = serialization.load_pem_private_key((KEYS / pem_file).read_bytes(), password=None).public_key()
    numbers = key.public_numbers()

    def b64(n):
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(numbers.n), "e": b64(numbers.e)}


def token(pem_file, kid):
    now = int(time.time())
    claims = {"iss": "https://idp.example/", "aud": "noetl", "sub": "idp|1", "roles": ["analyst"],
              "iat": now, "exp": now + 600}
    return jwt.encode(claims, (KEYS / pem_file).read_text(), algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("jwks")
    (root / "keys.json").write_text(json.dumps({"keys": [public_jwk("rsa.pem", "k1")]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (...)"
    port = int(line.split(" port ")[1].split()[0])
    yield root, port
    proc.terminate()
    proc.wait(timeout=10)


def until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    return predicate()


def test_keys_are_fetched_then_refetched_for_a_rotated_kid(start_envoy, jwks_server):
    root, port = jwks_server
    config = plugin_config()
    config["providers"].append({
        "name": "idp", "issuer": "https://idp.example/", "audiences": ["noetl"], "algorithms": ["RS256"],
        "roles_claim": "roles",
        "remote_jwks": {"cluster": "idp_jwks", "uri": "http://idp.example/keys.json", "cache_secs": 600},
    })
    envoy = start_envoy(config, clusters={"idp_jwks": port})
    url = envoy.url + "/api/catalog/data/x"

    ok = until(lambda: http(url, headers=bearer(token("rsa.pem", "k1"))).status == 200, 5)
    assert ok, envoy.log()
    assert http(envoy.url + "/api/catalog/system/x", headers=bearer(token("rsa.pem", "k1"))).status == 403

    # The issuer rotates in a new key; the first token signed with it finds no such kid...
    (root / "keys.json").write_text(json.dumps({"keys": [public_jwk("rsa.pem", "k1"), public_jwk("rsa-other.pem", "k2")]}))
    first = http(url, headers=bearer(token("rsa-other.pem", "k2")))
    assert first.status == 401 and first.json()["reason"] == "unknown_key"
    # ...and the set is fetched again (at most once per 10 s), after which it verifies.
    assert until(lambda: http(url, headers=bearer(token("rsa-other.pem", "k2"))).status == 200, 15), envoy.log()
    # A forged token with a known kid still fails on its signature.
    forged = jwt.encode({"iss": "https://idp.example/", "aud": "noetl", "exp": int(time.time()) + 60},
                        (KEYS / "rsa-other.pem").read_text(), algorithm="RS256", headers={"kid": "k1"})
    assert http(url, headers=bearer(forged)).json()["reason"] == "bad_signature"


def test_an_unreachable_jwks_is_a_401_not_a_hang(start_envoy):
    config = plugin_config()
    config["providers"].append({
        "name": "idp", "issuer": "https://idp.example/", "algorithms": ["RS256"],
        "remote_jwks": {"cluster": "no_such_cluster", "uri": "https://idp.example/keys.json"},
    })
    envoy = start_envoy(config)
    started = time.monotonic()
    resp = http(envoy.url + "/api/catalog/data/x", headers=bearer(token("rsa.pem", "k1")))
    assert resp.status == 401 and resp.json()["reason"] == "keys_unavailable"
    assert time.monotonic() - started < 2
