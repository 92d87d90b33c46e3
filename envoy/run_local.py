"""`make run`: Envoy with playbook-guard in front of a NoETL stand-in, on loopback.

Starts the NoETL API stand-in (test-harness/e2e/noetl_upstream.py), the validation-service
stand-in (NoETL's session-validation API, answering from envoy/demo-sessions.yaml), a local OIDC
issuer (test-harness/e2e/oidc_issuer.py, a Keycloak-like realm) and Envoy (envoy/envoy.yaml, which
loads build/playbook_guard.wasm; with PLAYBOOK_GUARD_DATABASE_URL set, the same bootstrap with a
policy imported from that NoETL database), run as build/envoy-run.yaml: that bootstrap plus the
Keycloak example provider (envoy/providers/keycloak.yaml) taking its keys from the issuer. Mints
development tokens with the CLI and the issuer, shows allowed and denied requests, and prints the
curl lines to try more. Ctrl-C stops everything.
"""

import json

import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLI = ROOT / "target" / "debug" / "playbook-guard"
STANDIN = ROOT / "target" / "debug" / "validation-service"
LISTEN = "http://127.0.0.1:10000"
ADMIN = "http://127.0.0.1:9901"
STANDIN_URL = "http://127.0.0.1:18081"
ISSUER_PORT = 18082
ISSUER_URL = f"http://127.0.0.1:{ISSUER_PORT}"
ISSUER = ISSUER_URL + "/realms/noetl"


def wait_for(url, what, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early (code {proc.returncode}); see build/envoy.log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not become ready at {url}")


def status_of(path, token):
    return status_with(path, {"Authorization": f"Bearer {token}"})


def status_with(path, headers):
    req = urllib.request.Request(LISTEN + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def noetl_login(user):
    """A NoETL opaque session for `user`, from the stand-in's login (as NoETL's own login issues one)."""
    req = urllib.request.Request(STANDIN_URL + "/api/auth/login", data=json.dumps(user).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["session_token"]


def execute(playbook, token):
    """POST /api/execute as NoETL's clients send it: (status, what the answer says)."""
    req = urllib.request.Request(LISTEN + "/api/execute", data=json.dumps({"path": playbook}).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, f"NoETL stand-in started execution {json.loads(resp.read())['execution_id']}"
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def mint(*args):
    return subprocess.run([str(CLI), "token", *args], check=True, capture_output=True, text=True).stdout.strip()


def envoy_config():
    """envoy/envoy.yaml (the default policy), or, with PLAYBOOK_GUARD_DATABASE_URL set, the same
    bootstrap rendered with a policy imported from that NoETL database (import-noetl reads the
    URL from the environment, so its password is in no command line)."""
    if not os.environ.get("PLAYBOOK_GUARD_DATABASE_URL"):
        return "envoy/envoy.yaml"
    policy = ROOT / "build" / "noetl-policy.yaml"
    imported = subprocess.run([str(CLI), "import-noetl", "--output", str(policy)], capture_output=True, text=True)
    if imported.returncode != 0:
        sys.exit(f"PLAYBOOK_GUARD_DATABASE_URL is set, but the import failed: {imported.stderr.strip()}")
    print(imported.stderr.strip())
    config = ROOT / "build" / "envoy-noetl.yaml"
    rendered = subprocess.run([str(CLI), "render", "--policy", str(policy)], capture_output=True, text=True, cwd=ROOT)
    if rendered.returncode != 0:
        sys.exit(f"render with the imported policy failed: {rendered.stderr.strip()}")
    config.write_text(rendered.stdout)
    print("The policy comes from NoETL's database (build/noetl-policy.yaml); Envoy runs build/envoy-noetl.yaml.\n")
    return str(config.relative_to(ROOT))


def with_keycloak(bootstrap):
    """`bootstrap` (a path under ROOT) plus the Keycloak example provider, its issuer and keys the
    local OIDC issuer's, written to build/envoy-run.yaml. The validation service knows the
    Keycloak user's session (demo-keycloak) but holds no roles for it, so `token_roles: fallback`
    lets the token's roles decide; every other demo session has roles, which still win."""
    doc = yaml.safe_load((ROOT / bootstrap).read_text())
    static = doc["static_resources"]
    static["clusters"].append({
        "name": "oidc_issuer", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "oidc_issuer", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ISSUER_PORT}}}}]}]}})
    hcm = static["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    configuration = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]
    plugin = json.loads(configuration["value"])
    provider = yaml.safe_load((ROOT / "envoy" / "providers" / "keycloak.yaml").read_text())
    provider.update(issuer=ISSUER, discovery={"cluster": "oidc_issuer"})
    plugin["providers"].append(provider)
    plugin["validation"]["token_roles"] = "fallback"
    configuration["value"] = json.dumps(plugin)
    out = ROOT / "build" / "envoy-run.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(out.relative_to(ROOT))


def issuer_mint(query, claims):
    req = urllib.request.Request(f"{ISSUER_URL}/admin/mint?{query}", data=json.dumps(claims).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode()


def main():
    env = dict(os.environ)
    # A fresh secret per run unless one is given: the filter refuses secrets under 32 bytes.
    env.setdefault("PLAYBOOK_GUARD_HS256_SECRET", secrets.token_urlsafe(48))
    os.environ.update(env)
    (ROOT / "build").mkdir(exist_ok=True)
    procs = []
    try:
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "test-harness" / "e2e" / "noetl_upstream.py"), "--port", "18080"],
            stdout=subprocess.DEVNULL,
        )
        procs.append(upstream)
        standin = subprocess.Popen(
            [str(STANDIN), "--port", "18081", "--sessions", str(ROOT / "envoy" / "demo-sessions.yaml")],
            stdout=subprocess.PIPE, text=True,
        )
        procs.append(standin)
        if not standin.stdout.readline().startswith("listening on"):
            sys.exit("the validation-service stand-in did not start (is port 18081 free?)")
        issuer = subprocess.Popen(
            [sys.executable, str(ROOT / "test-harness" / "e2e" / "oidc_issuer.py"), "--port", str(ISSUER_PORT),
             "--path", "/realms/noetl"],
            stdout=subprocess.PIPE, text=True,
        )
        procs.append(issuer)
        if not issuer.stdout.readline().startswith("oidc issuer"):
            sys.exit(f"the OIDC issuer stand-in did not start (is port {ISSUER_PORT} free?)")
        config = with_keycloak(envoy_config())
        log = open(ROOT / "build" / "envoy.log", "w")
        envoy = subprocess.Popen(
            [str(VENV_BIN / "envoy"), "-c", config, "--concurrency", "2",
             "--log-level", "warn", "--component-log-level", "wasm:info"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        procs.append(envoy)
        wait_for(ADMIN + "/ready", "Envoy", envoy)
        wait_for(LISTEN + "/health", "Envoy listener", envoy)

        # The session id names the session the validation service knows (envoy/demo-sessions.yaml);
        # the service, not the token, says which roles the user holds.
        analyst = mint("--sub", "42", "--sid", "demo-analyst", "--roles", "analyst")
        allowed = f"{LISTEN}/api/catalog/data/daily_load/ui_schema"
        denied = f"{LISTEN}/api/catalog/system/reset/ui_schema"
        print("playbook-guard is running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901), NoETL stand-in on :18080,")
        print("validation-service stand-in on :18081 (sessions from envoy/demo-sessions.yaml),")
        print(f"OIDC issuer stand-in on :{ISSUER_PORT} ({ISSUER}; Envoy runs {config})")
        print(f"Envoy's log: build/envoy.log   stats: curl -s {ADMIN}/stats | grep playbook_guard\n")
        print("A token for user 42 with role analyst (execute/view data/**); allowed (200):")
        print(f"  curl -i -H {shlex.quote('Authorization: Bearer ' + analyst)} {allowed}")
        print(f"  -> {status_of('/api/catalog/data/daily_load/ui_schema', analyst)}\n")
        print("The same token on a system playbook; denied (403):")
        print(f"  curl -i -H {shlex.quote('Authorization: Bearer ' + analyst)} {denied}")
        print(f"  -> {status_of('/api/catalog/system/reset/ui_schema', analyst)}\n")
        session = noetl_login({"user_id": 46, "email": "sam@example.com", "display_name": "Sam Analyst",
                               "roles": ["analyst"]})
        print("A NoETL session token (opaque: 32 hex characters, as NoETL's login issues them) for user 46,")
        print("role analyst; only the validation service can vouch for it; allowed (200):")
        print(f"  curl -i -H 'X-Session-Token: {session}' {allowed}")
        print(f"  -> {status_with('/api/catalog/data/daily_load/ui_schema', {'X-Session-Token': session})}\n")
        print("A token that is neither a JWT nor NoETL-shaped; refused without asking NoETL (401 malformed):")
        print(f"  curl -i -H 'X-Session-Token: let-me-in' {allowed}")
        print(f"  -> {status_with('/api/catalog/data/daily_load/ui_schema', {'X-Session-Token': 'let-me-in'})}\n")
        print("NoETL's run endpoint, POST /api/execute: a data/ playbook (allowed, 200), a system/ one (denied, 403):")
        for playbook in ("data/daily_load", "system/reset"):
            body = shlex.quote(json.dumps({"path": playbook}))
            print(f"  curl -i -H {shlex.quote('Authorization: Bearer ' + analyst)} -H 'Content-Type: application/json'"
                  f" -d {body} {LISTEN}/api/execute")
            print("  -> {} {}".format(*execute(playbook, analyst)))
        print("  what the stand-in ran (what NoETL would have run): curl -s http://127.0.0.1:18080/_ran\n")
        stats = json.loads(urllib.request.urlopen(STANDIN_URL + "/_stats", timeout=5).read())
        print(f"Validation callouts for that session so far: {stats['sessions'].get('demo-analyst', 0)}"
              " (then answered from the cache for 300 s)\n")
        # A Keycloak access token: its role sits at realm_access.roles only, which the provider
        # reads through a JSON pointer; its keys come through the issuer's discovery document.
        keycloak = issuer_mint("shape=keycloak&sub=ada&roles=analyst&lifetime=3600", {"sid": "demo-keycloak"})
        print("A Keycloak-shaped token from the OIDC issuer stand-in (envoy/providers/keycloak.yaml, keys from")
        print("its discovery document), role analyst at realm_access.roles; allowed (200), and on system/ denied (403):")
        print(f"  curl -i -H {shlex.quote('Authorization: Bearer ' + keycloak)} {allowed}")
        print(f"  -> {status_of('/api/catalog/data/daily_load/ui_schema', keycloak)}")
        print(f"  curl -i -H {shlex.quote('Authorization: Bearer ' + keycloak)} {denied}")
        print(f"  -> {status_of('/api/catalog/system/reset/ui_schema', keycloak)}")
        print(f"  more: curl -s -X POST '{ISSUER_URL}/admin/mint?shape=keycloak&sub=ada&client_roles=viewer'"
              " -d '{\"sid\": \"demo-keycloak\"}'\n")
        print("More tokens (sessions: demo-developer, demo-viewer, demo-admin, demo-revoked):")
        print("  PLAYBOOK_GUARD_HS256_SECRET=" + shlex.quote(env["PLAYBOOK_GUARD_HS256_SECRET"])
              + f" {CLI.relative_to(ROOT)} token --sid demo-developer")
        print("\nCtrl-C stops Envoy and the upstream.", flush=True)
        while envoy.poll() is None:
            time.sleep(0.5)
        sys.exit(f"Envoy exited (code {envoy.returncode}); see build/envoy.log")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
