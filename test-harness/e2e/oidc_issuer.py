"""A local OpenID Connect issuer for the tests and `make run`: a discovery document, a JWK Set
with key rotation, and tokens shaped like those of Auth0, Okta, Entra ID, Cognito and Keycloak.

In a test:

    issuer = OidcIssuer(path="/realms/noetl").start()
    token = issuer.mint("keycloak", sub="u-1", roles=["analyst"], client_roles=["viewer"])
    issuer.rotate()                      # a new signing key, published beside the old one
    issuer.discovery_delay = 2.0         # the next discovery documents take 2 s
    issuer.hits("/realms/noetl/keys")    # how many times the JWK Set was fetched
    issuer.stop()

As a script (`python oidc_issuer.py --port 18082 [--path /realms/noetl]`) it prints one line,
`oidc issuer <issuer> listening on http://127.0.0.1:<port>`, and also answers the admin
endpoints, for a process that cannot reach the object:

    POST /admin/rotate                              -> {"kid": <the new signing key>}
    POST /admin/retire?kid=K                        -> 204
    POST /admin/mint?shape=keycloak&sub=S&roles=a,b&groups=..&client_roles=..&lifetime=600
         (a JSON object body adds claims)           -> the token (text/plain)
    POST /admin/discovery?delay=S&issuer=I          -> 204 (issuer= empty: the real one again)
    POST /admin/jwks?delay=S                        -> 204
    GET  /admin/hits?path=P                         -> {"hits": n}

The claims follow each IdP's documentation of its access tokens; the example values (client
ids, audiences, scopes, tenant) are the ones in envoy/providers/<idp>.yaml.
"""

import argparse
import json
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

# The example values envoy/providers/*.yaml are written for.
AUTH0_AUDIENCE = "https://noetl.example.com/api"
AUTH0_CLIENT_ID = "Zx4aW2pQ9rT7uV1bN3mK5sL8dF6gH0jC"
AUTH0_ROLES_CLAIM = "https://noetl.io/roles"
OKTA_AUDIENCE = "api://noetl"
OKTA_CLIENT_ID = "0oa8f2k1x9QwErTy5d7"
ENTRA_TENANT = "9b1c4e2a-7d3f-4a6b-8c5e-2f0a1b3c4d5e"
ENTRA_API_CLIENT_ID = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
ENTRA_UI_CLIENT_ID = "2c8f1b3a-5d4e-4f60-9a7b-8c9d0e1f2a3b"
COGNITO_CLIENT_ID = "4jq1n2ma0f3rpl5kqbf1n7s2tq"
KEYCLOAK_AUDIENCE = "noetl"
KEYCLOAK_CLIENT_ID = "noetl-ui"

SHAPES = ("auth0", "okta", "entra", "cognito", "keycloak")


def _auth0(issuer, sub, roles, groups, client_roles):
    # An Auth0 API access token; the roles come from a post-login Action that copies
    # event.authorization.roles into a namespaced claim (Auth0 drops un-namespaced custom claims).
    _refuse(groups=groups, client_roles=client_roles)
    return {"sub": sub or "auth0|64b7f0c2e1a9d3b4c5f60718", "aud": [AUTH0_AUDIENCE, issuer + "/userinfo"],
            "azp": AUTH0_CLIENT_ID, "scope": "openid profile email noetl:api", AUTH0_ROLES_CLAIM: list(roles or [])}


def _okta(issuer, sub, roles, groups, client_roles):
    # An Okta custom authorization server's access token: `scp` is an array, the client is `cid`,
    # the user's id `uid`; `groups` is there once the server has a groups claim.
    _refuse(roles=roles, client_roles=client_roles)
    return {"sub": sub or "ada@example.com", "aud": OKTA_AUDIENCE, "cid": OKTA_CLIENT_ID,
            "uid": "00u1a2b3c4D5E6f7G8h9", "scp": ["openid", "profile", "noetl.api"],
            "groups": list(groups or []), "ver": 1, "jti": "AT." + uuid.uuid4().hex}


def _entra(issuer, sub, roles, groups, client_roles):
    # A v2.0 access token for the NoETL API app (accessTokenAcceptedVersion: 2): `aud` is its
    # client id, `azp` the calling app's, `scp` a space-separated string, `roles` the app roles
    # assigned, `groups` object ids (GUIDs) when groupMembershipClaims is set.
    _refuse(client_roles=client_roles)
    claims = {"sub": sub or "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "aud": ENTRA_API_CLIENT_ID,
              "azp": ENTRA_UI_CLIENT_ID, "azpacr": "0", "tid": ENTRA_TENANT,
              "oid": "00000000-0000-0000-66f3-3332eca7ea81", "scp": "access_as_user",
              "preferred_username": "ada@example.com", "name": "Ada Lovelace", "ver": "2.0"}
    if roles:
        claims["roles"] = list(roles)
    if groups:
        claims["groups"] = list(groups)
    return claims


def _cognito(issuer, sub, roles, groups, client_roles):
    # A Cognito user pool access token: no `aud` (the app client is `client_id`), `token_use`
    # says which kind of token it is, the groups are `cognito:groups`.
    _refuse(roles=roles, client_roles=client_roles)
    sub = sub or "8c2e5a1f-4b3d-4e6a-9f7c-0d1e2f3a4b5c"
    claims = {"sub": sub, "token_use": "access", "client_id": COGNITO_CLIENT_ID,
              "scope": "openid noetl/api", "username": sub, "version": 2,
              "jti": str(uuid.uuid4()), "origin_jti": str(uuid.uuid4()), "event_id": str(uuid.uuid4())}
    if groups:
        claims["cognito:groups"] = list(groups)
    return claims


def _keycloak(issuer, sub, roles, groups, client_roles):
    # A Keycloak access token: realm roles at realm_access.roles (with the realm's defaults),
    # the `noetl` client's roles at resource_access.noetl.roles, `aud` from an audience mapper.
    _refuse(groups=groups)
    return {"sub": sub or "f3b2c1d0-9e8f-4a7b-8c6d-5e4f3a2b1c0d", "aud": [KEYCLOAK_AUDIENCE, "account"],
            "azp": KEYCLOAK_CLIENT_ID, "typ": "Bearer", "sid": str(uuid.uuid4()),
            "scope": "openid profile email", "preferred_username": "ada", "email_verified": True,
            "realm_access": {"roles": ["default-roles-noetl", "offline_access", "uma_authorization", *(roles or [])]},
            "resource_access": {KEYCLOAK_AUDIENCE: {"roles": list(client_roles or [])},
                                "account": {"roles": ["manage-account", "view-profile"]}}}


def _refuse(**unsupported):
    for name, value in unsupported.items():
        if value:
            raise ValueError(f"this token shape has no place for {name}")


_CLAIMS = {"auth0": _auth0, "okta": _okta, "entra": _entra, "cognito": _cognito, "keycloak": _keycloak}


class OidcIssuer:
    """An OpenID provider on 127.0.0.1: `start()` it, mint tokens, rotate keys, `stop()` it.

    `path` is the issuer's path (`/realms/noetl` for a Keycloak realm, "" for an Auth0-like
    issuer at the root); the discovery document is at `<issuer>/.well-known/openid-configuration`
    and the JWK Set at `<issuer>/keys`. The test controls (`discovery_delay`, `discovery_issuer`,
    `jwks_delay`) may be set at any time and apply from the next request."""

    def __init__(self, path="", port=0, admin=False):
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.discovery_delay = 0.0
        self.discovery_issuer = None
        self.jwks_delay = 0.0
        self._port = port
        self._admin = admin
        self._lock = threading.Lock()
        self._keys = []  # (kid, private key), oldest first; the last one signs
        self._hits = Counter()
        self._server = None
        self.rotate()

    # ── lifecycle ──────────────────────────────────────────────────────────────────────────────
    def start(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ── addresses ─────────────────────────────────────────────────────────────────────────────
    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self):
        return self.url + self.path

    @property
    def discovery_path(self):
        return self.path + "/.well-known/openid-configuration"

    @property
    def jwks_path(self):
        return self.path + "/keys"

    @property
    def jwks_uri(self):
        return self.url + self.jwks_path

    # ── keys ──────────────────────────────────────────────────────────────────────────────────
    def rotate(self):
        """A new 2048-bit RSA key: published in the JWK Set beside the current ones, and from now
        on the signing key. Returns its kid."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = "k-" + uuid.uuid4().hex[:12]
        with self._lock:
            self._keys.append((kid, key))
        return kid

    def retire(self, kid):
        """Removes a key from the JWK Set; the signing key cannot be retired."""
        with self._lock:
            if self._keys and self._keys[-1][0] == kid:
                raise ValueError("the signing key cannot be retired; rotate() first")
            self._keys = [(k, key) for k, key in self._keys if k != kid]

    @property
    def kid(self):
        """The signing key's kid."""
        with self._lock:
            return self._keys[-1][0]

    @property
    def kids(self):
        """Every published kid, oldest first."""
        with self._lock:
            return [kid for kid, _ in self._keys]

    def jwks(self):
        """The JWK Set as served: the public half of every key."""
        with self._lock:
            keys = list(self._keys)
        return {"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig",
                          "alg": "RS256"} for kid, key in keys]}

    def discovery(self):
        """The discovery document (OpenID Connect Discovery 1.0, section 3) as served."""
        issuer = self.issuer
        return {
            "issuer": self.discovery_issuer if self.discovery_issuer is not None else issuer,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "userinfo_endpoint": issuer + "/userinfo",
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code", "id_token", "id_token token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "email", "name"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        }

    def hits(self, path):
        """How many requests reached `path` (any method; the query is not part of it)."""
        with self._lock:
            return self._hits[path]

    # ── tokens ────────────────────────────────────────────────────────────────────────────────
    def mint(self, shape, sub=None, roles=None, groups=None, client_roles=None, lifetime=600, **extra_claims):
        """A token shaped like `shape`'s (one of SHAPES), `iss` this issuer, signed RS256 with the
        signing key and its kid. `roles`: Auth0's namespaced claim, Entra's app roles, Keycloak's
        realm roles; `groups`: Okta's, Entra's (GUIDs), Cognito's; `client_roles`: Keycloak's
        `noetl` client roles. `extra_claims` are added last; a value of None removes the claim
        (`azp=None`, a token without it)."""
        if shape not in _CLAIMS:
            raise ValueError(f"unknown token shape {shape!r}: one of {', '.join(SHAPES)}")
        now = int(time.time())
        claims = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + int(lifetime),
                  **_CLAIMS[shape](self.issuer, sub, roles, groups, client_roles)}
        if shape in ("cognito", "keycloak", "okta"):
            claims["auth_time"] = now  # these three carry it in access tokens
        for name, value in extra_claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        with self._lock:
            kid, key = self._keys[-1]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _handler(issuer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1  # one write per answer (see demo_upstream.py)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def _serve(self, method):
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            with issuer._lock:
                issuer._hits[url.path] += 1
            if method == "GET" and url.path == issuer.discovery_path:
                time.sleep(issuer.discovery_delay)
                return self._json(200, issuer.discovery())
            if method == "GET" and url.path == issuer.jwks_path:
                time.sleep(issuer.jwks_delay)
                return self._json(200, issuer.jwks())
            if issuer._admin and url.path.startswith("/admin/"):
                try:
                    return self._admin(method, url.path, query, body)
                except (ValueError, KeyError) as err:
                    return self._json(400, {"error": str(err)})
            return self._json(404, {"error": "not found", "path": url.path})

        def _admin(self, method, path, query, body):
            if method == "POST" and path == "/admin/rotate":
                return self._json(200, {"kid": issuer.rotate()})
            if method == "POST" and path == "/admin/retire":
                issuer.retire(query["kid"])
                return self._answer(204, b"", "text/plain")
            if method == "POST" and path == "/admin/mint":
                extra = json.loads(body) if body else {}
                if not isinstance(extra, dict):
                    raise ValueError("the body, when given, is a JSON object of extra claims")

                def names(key):
                    return [n for n in query.get(key, "").split(",") if n] or None

                token = issuer.mint(query.get("shape", "keycloak"), sub=query.get("sub") or None,
                                    roles=names("roles"), groups=names("groups"),
                                    client_roles=names("client_roles"),
                                    lifetime=int(query.get("lifetime", 600)), **extra)
                return self._answer(200, token.encode(), "text/plain")
            if method == "POST" and path == "/admin/discovery":
                if "delay" in query:
                    issuer.discovery_delay = float(query["delay"])
                if "issuer" in query:
                    issuer.discovery_issuer = query["issuer"] or None
                return self._answer(204, b"", "text/plain")
            if method == "POST" and path == "/admin/jwks":
                issuer.jwks_delay = float(query.get("delay", 0))
                return self._answer(204, b"", "text/plain")
            if method == "GET" and path == "/admin/hits":
                return self._json(200, {"hits": issuer.hits(query["path"])})
            return self._json(404, {"error": "no such admin endpoint", "path": path})

        def _json(self, status, value):
            self._answer(status, json.dumps(value).encode(), "application/json")

        def _answer(self, status, payload, content_type):
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt, *args):  # quiet: the tests read hits(), not a log
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18082, help="0 picks a free port")
    parser.add_argument("--path", default="", help="the issuer's path, e.g. /realms/noetl")
    args = parser.parse_args()
    issuer = OidcIssuer(path=args.path, port=args.port, admin=True).start()
    print(f"oidc issuer {issuer.issuer} listening on {issuer.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        issuer.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
