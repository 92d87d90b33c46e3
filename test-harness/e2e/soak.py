"""`make soak`: mixed traffic through real Envoy (two workers) for SOAK_SECONDS (default 600),
with the policy published through ECDS every 30 s and a validation service that fails 5% of
callouts and is slow (past the callout timeout) for 1%.

Every answer is checked against an oracle computed here from the policy that was active when
the request was sent (either policy within a window around each publish). It reports crashes
and traps, wrong decisions, Envoy's memory over time (the slope of a least-squares fit after
warm-up) and validation callouts per session per TTL window, and writes build/soak.svg (memory
and requests per second over time). It exits non-zero on a crash, a trap or a wrong decision.

Not part of `make test`: it runs for ten minutes.
"""

import http.client as httpclient
import json
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CLI, ENVOY, ROOT, SECRET, WASM, free_port, http, wait_envoy_ready  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
PUBLISH_EVERY = int(os.environ.get("SOAK_PUBLISH_EVERY", "30"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "8"))
TTL = 20  # seconds a validation answer is fresh: many TTL windows per session in one soak
TIMEOUT_MS = 300  # the callout timeout; a "slow" answer takes longer
FAIL_RATIO, SLOW_RATIO = 0.05, 0.01
# Requests sent this close to a publish may be decided by either policy.
SETTLE_BEFORE, SETTLE_AFTER = 1.0, 3.0
BUILD = ROOT / "build"
ROLES = ["admin", "developer", "analyst", "viewer"]
PLAYBOOKS = ["data/daily_load", "data/eu/report", "system/reset", "ops/cleanup", "examples/hello_world"]

# The route classes of the filter, one route each, as the shipped NoETL profile writes them (the
# soak's own table, so the oracle below stays short): decided from the path, from JSON body fields
# in NoETL's precedence (a `catalog_id` needs the permission on every playbook), from a GraphQL
# body; on every playbook; restricted; blocked; authenticated only; public; and unmapped
# (default_action: deny).
ROUTES = [
    {"match": {"prefix": "/api/auth/"}, "public": True},
    {"match": {"methods": ["POST"], "path": "/graphql"},
     "authorize": {"permission": "execute", "playbook": {"graphql_variable": "name"}}},
    {"match": {"methods": ["POST"], "path": "/api/execute"},
     "authorize": {"permission": "execute", "playbook": {"json_fields": [
         {"pointer": "/catalog_id", "lookup": "catalog_id", "present": "truthy"}, {"pointer": "/path"}]}}},
    {"match": {"methods": ["GET"], "glob": "/api/catalog/**/ui_schema"},
     "authorize": {"permission": "view", "playbook": {"path_capture": True}}},
    {"match": {"methods": ["GET"], "path": "/api/executions"},
     "authorize": {"permission": "view", "playbook": {"all_playbooks": True}}},
    {"match": {"methods": ["POST"], "path": "/api/postgres/execute"}, "restricted": True},
    {"match": {"glob": "/api/internal/**"}, "blocked": True},
    {"match": {"path": "/api/me"}, "authenticate": True},
]


def policy(version, analyst_globs):
    return {
        "version": version,
        "roles": {
            "admin": {"allow": [{"permissions": ["*"], "playbooks": ["**"]}]},
            "developer": {"allow": [{"permissions": ["execute", "view", "modify"], "playbooks": ["**"]}],
                          "deny": [{"permissions": ["*"], "playbooks": ["system/**"]}]},
            "analyst": {"allow": [{"permissions": ["execute", "view"], "playbooks": analyst_globs}]},
            "viewer": {"allow": [{"permissions": ["view"], "playbooks": ["**"]}]},
        },
        "deny": [],
    }


# Two policies that differ in what an analyst may do; the soak flips between them.
POLICIES = [policy("soak-a", ["data/**"]), policy("soak-b", ["data/**", "ops/**"])]


def glob_regex(glob):
    """globset's semantics for the globs above (`literal_separator`): `**` crosses segments."""
    out = ""
    for i, segment in enumerate(glob.split("/")):
        out += "" if i == 0 else "/"
        out += ".*" if segment == "**" else re.escape(segment).replace(r"\*", "[^/]*")
    return re.compile(out.replace("/.*", "/.+") + r"\Z")


def unrestricted(doc, roles, permission):
    """Whether some role may act on every playbook: it allows the permission on `**` and no deny
    (its own or top-level) covers the permission at all, as the filter compiles it."""
    def covers(rules):
        return any(permission in r["permissions"] or "*" in r["permissions"] for r in rules)
    if covers(doc.get("deny", [])):
        return False
    return any(any((permission in r["permissions"] or "*" in r["permissions"]) and "**" in r["playbooks"]
                   for r in doc["roles"][role].get("allow", [])) and not covers(doc["roles"][role].get("deny", []))
               for role in roles if role in doc["roles"])


def allows(doc, roles, permission, playbook):
    """The policy's decision, as SPEC section 6 states it: some role allows and that role does
    not deny, and no top-level deny matches."""
    def hit(rules):
        return any((permission in r["permissions"] or "*" in r["permissions"])
                   and any(glob_regex(g).match(playbook) for g in r["playbooks"]) for r in rules)
    if hit(doc.get("deny", [])):
        return False
    return any(hit(doc["roles"][r].get("allow", [])) and not hit(doc["roles"][r].get("deny", []))
               for r in roles if r in doc["roles"])


class FlakyValidation:
    """A proxy in front of the validation stand-in that fails 5% of callouts (500) and answers
    1% after the callout timeout, counting what it forwarded per session."""

    def __init__(self, upstream_port):
        soak = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                roll = random.random()
                if roll < FAIL_RATIO:
                    soak.count("failed")
                    return self.answer(500, b'{"status": "error", "error": "soak: injected failure"}')
                if roll < FAIL_RATIO + SLOW_RATIO:
                    soak.count("slow")
                    time.sleep(TIMEOUT_MS / 1000 + 0.2)
                token = json.loads(body).get("session_token", "")
                with soak.lock:
                    soak.calls[token] = soak.calls.get(token, 0) + 1
                conn = httpclient.HTTPConnection("127.0.0.1", upstream_port, timeout=5)
                conn.request("POST", self.path, body, {"content-type": "application/json"})
                resp = conn.getresponse()
                self.answer(resp.status, resp.read())

            def answer(self, status, payload):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.calls, self.injected = {}, {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, what):
        with self.lock:
            self.injected[what] = self.injected.get(what, 0) + 1


def start(args, **kwargs):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kwargs)
    return proc, int(proc.stdout.readline().rsplit(":", 1)[1])


def cli(*args):
    env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET)
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, check=True)


def token(sid, exp_in=3600, secret=SECRET):
    now = int(time.time())
    return jwt.encode({"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": sid, "sid": sid,
                       "roles": ["admin"], "iat": now, "exp": now + exp_in}, secret, algorithm="HS256")


class Soak:
    def __init__(self, tmp):
        self.tmp = tmp
        rng = random.Random(7)
        # Sessions the validation stand-in knows: JWT sids, and opaque NoETL sessions it issues.
        self.sessions = {f"soak-{i}": [rng.choice(ROLES)] for i in range(120)}
        sessions_file = tmp / "sessions.yaml"
        sessions_file.write_text(yaml.safe_dump(
            {**{sid: {"user_id": i, "roles": roles} for i, (sid, roles) in enumerate(self.sessions.items())},
             "soak-revoked": {"user_id": 999, "valid": False}}))
        self.procs = []
        upstream, self.upstream_port = start([sys.executable, str(ROOT / "test-harness/e2e/demo_upstream.py"),
                                              "--port", "0"])
        standin, standin_port = start([str(ROOT / "target/debug/validation-service"), "--port", "0",
                                       "--sessions", str(sessions_file)])
        self.procs += [upstream, standin]
        self.opaque = {}
        for i in range(40):
            roles = [rng.choice(ROLES)]
            resp = http(f"http://127.0.0.1:{standin_port}/api/auth/login", method="POST",
                        body=json.dumps({"user_id": 5000 + i, "roles": roles}))
            self.opaque[resp.json()["session_token"]] = roles
        self.flaky = FlakyValidation(standin_port)

        config = yaml.safe_load((ROOT / "envoy/filter-config.yaml").read_text())
        config["routes"] = ROUTES
        config["session"] = {"ttl_secs": TTL, "negative_ttl_secs": 10, "max_entries": 100000}
        if os.environ.get("SOAK_MAX_NEGATIVE_ENTRIES"):
            config["session"]["max_negative_entries"] = int(os.environ["SOAK_MAX_NEGATIVE_ENTRIES"])
        config["validation"].update(timeout_ms=TIMEOUT_MS, failure_mode="deny")
        self.filter_config = tmp / "filter-config.yaml"
        self.filter_config.write_text(yaml.safe_dump(config))
        self.port, self.admin_port = free_port(), free_port()
        self.ecds_path = tmp / "ecds" / "playbook-guard.yaml"
        self.ecds_path.parent.mkdir()
        bootstrap = cli("render", "--output", "bootstrap-ecds", "--ecds-path", self.ecds_path,
                        "--config", self.filter_config, "--listen-port", self.port,
                        "--admin-port", self.admin_port, "--upstream-port", self.upstream_port,
                        "--validation-port", self.flaky.port).stdout
        (tmp / "envoy.yaml").write_text(bootstrap)
        self.policy_files = []
        for doc in POLICIES:
            path = tmp / f"{doc['version']}.yaml"
            path.write_text(yaml.safe_dump(doc))
            self.policy_files.append(path)
        self.active = 0
        self.publish(0)
        self.log_path = tmp / "envoy.log"
        self.envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(tmp / "envoy.yaml"), "--concurrency", "2", "--use-dynamic-base-id",
             "--log-level", "warn", "--component-log-level", "wasm:warn"],
            env=dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET),
            stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, cwd=tmp)
        self.procs.append(self.envoy)
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_envoy_ready(self.envoy, self.admin, lambda: self.log_path.read_text(errors="replace"), 60)
        self.publishes = []  # monotonic times
        self.results = []  # (sent_at, ok, wrong_detail or None)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def publish(self, index):
        cli("publish", "--policy", self.policy_files[index], "--config", self.filter_config,
            "--to", self.ecds_path, "--wasm", WASM)
        self.active = index

    def case(self, rng):
        """A request, and the set of statuses the oracle accepts for it under each policy."""
        kind = rng.choices(["jwt", "opaque", "expired", "forged", "junk", "unknown", "revoked", "none"],
                           [60, 15, 5, 5, 5, 5, 3, 2])[0]
        roles, headers = None, {}
        if kind == "jwt":
            sid = rng.choice(list(self.sessions))
            roles, headers = self.sessions[sid], {"Authorization": f"Bearer {token(sid)}"}
        elif kind == "opaque":
            tok = rng.choice(list(self.opaque))
            roles = self.opaque[tok]
            headers = rng.choice([{"X-Session-Token": tok}, {"Cookie": f"session_token={tok}"},
                                  {"Authorization": f"Bearer {tok}"}])
        elif kind == "expired":
            headers = {"Authorization": f"Bearer {token('soak-1', exp_in=-600)}"}
        elif kind == "forged":
            headers = {"Authorization": f"Bearer {token('soak-1', secret='x' * 40)}"}
        elif kind == "junk":
            headers = {"X-Session-Token": rng.choice(["let-me-in", secrets.token_hex(32), "a.b.c"])}
        elif kind == "unknown":
            headers = {"X-Session-Token": secrets.token_hex(16)}
        elif kind == "revoked":
            headers = {"Authorization": f"Bearer {token('soak-revoked')}"}
        playbook = rng.choice(PLAYBOOKS)
        route = rng.choice(["catalog", "execute", "by-id", "graphql", "listing", "sql", "internal", "me", "public",
                            "unmapped"])
        method, path, body, permission = {
            "catalog": ("GET", f"/api/catalog/{playbook}/ui_schema", None, "view"),
            "execute": ("POST", "/api/execute", json.dumps({"path": playbook}), "execute"),
            # NoETL runs the catalog entry, whatever `path` says: execute on every playbook.
            "by-id": ("POST", "/api/execute", json.dumps({"catalog_id": rng.choice([7, "7", " 12 "]),
                                                          "path": playbook}), "execute"),
            "listing": ("GET", "/api/executions", None, "view"),
            "sql": ("POST", "/api/postgres/execute", json.dumps({"query": "select 1"}), None),
            "internal": ("POST", "/api/internal/outbox/claim", json.dumps({}), None),
            "graphql": ("POST", "/graphql", json.dumps(
                {"query": "mutation($n: String!) { executePlaybook(name: $n) { id } }", "variables": {"n": playbook}}),
                "execute"),
            "me": ("GET", "/api/me", None, None),
            "public": ("GET", "/api/auth/status", None, None),
            "unmapped": ("GET", "/api/unmapped", None, None),
        }[route]

        def expected(doc):
            if route == "public":
                return {200}
            if route in ("unmapped", "internal"):
                return {403}
            if roles is None:
                # The service may be asked (unknown, revoked) and fail: 503 then, never a 2xx.
                return {401, 503} if kind in ("unknown", "revoked") else {401}
            if route == "me":
                return {200, 503}
            if route == "sql":
                return {200 if "admin" in roles else 403, 503}
            if route in ("by-id", "listing"):
                return {200 if unrestricted(doc, roles, permission) else 403, 503}
            return {200 if allows(doc, roles, permission, playbook) else 403, 503}

        return method, path, body, headers, [expected(doc) for doc in POLICIES], (kind, route, playbook, roles)

    def client(self, seed):
        rng = random.Random(seed)
        conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            method, path, body, headers, expected, what = self.case(rng)
            sent = time.monotonic()
            active = self.active
            try:
                conn.request(method, path, body, {**headers, "content-type": "application/json"} if body else headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, httpclient.HTTPException) as err:
                status = f"error {err}"
                conn.close()
                conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=10)
            near = any(-SETTLE_AFTER < sent - t < SETTLE_BEFORE for t in self.publishes)
            acceptable = expected[0] | expected[1] if near else expected[active]
            wrong = None if status in acceptable else f"{status} for {method} {path} {what}, want {sorted(acceptable)}"
            with self.lock:
                self.results.append((sent, status, wrong))

    def stat(self, name):
        for line in http(f"{self.admin}/stats?filter={re.escape(name)}").body.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def run(self):
        clients = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]
        began = time.monotonic()
        for c in clients:
            c.start()
        memory, next_publish = [], began + PUBLISH_EVERY
        while (now := time.monotonic()) < began + SECONDS:
            if self.envoy.poll() is not None:
                break
            memory.append((now - began, self.stat("server.memory_allocated")))
            if now >= next_publish:
                self.publishes.append(time.monotonic())
                self.publish(1 - self.active)
                next_publish += PUBLISH_EVERY
            time.sleep(min(5, max(0.1, began + SECONDS - now)))
        self.stop.set()
        for c in clients:
            c.join(timeout=15)
        return began, memory

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def slope_per_minute(points):
    """Least-squares slope of (seconds, bytes), in bytes per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return 60 * sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def plot(path, memory, rps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot([t for t, _ in memory], [m / 2**20 for _, m in memory], color="tab:blue")
    top.set_ylabel("Envoy memory allocated (MiB)")
    top.set_title("playbook-guard soak: two workers, policy published every "
                  f"{PUBLISH_EVERY} s, validation failing {FAIL_RATIO:.0%}")
    bottom.plot([t for t, _ in rps], [r for _, r in rps], color="tab:green")
    bottom.set_ylabel("requests per second")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, format="svg")


def main():
    BUILD.mkdir(exist_ok=True)
    tmp = BUILD / "soak"
    if tmp.exists():
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
    tmp.mkdir()
    soak = Soak(tmp)
    try:
        began, memory = soak.run()
        alive = soak.envoy.poll() is None
        log = soak.log_path.read_text(errors="replace")
    finally:
        soak.close()
    results = soak.results
    total = len(results)
    wrong = [w for _, _, w in results if w]
    errors = sum(1 for _, s, _ in results if isinstance(s, str))
    traps = len(re.findall(r"panicked|Wasm VM failed|Function: proxy_on_\w+ failed|wasm trap|Plugin .* failed", log))
    seconds = max(1.0, (results[-1][0] - began) if results else 1.0)
    rps = []
    for second in range(int(seconds) // 5):
        n = sum(1 for t, _, _ in results if second * 5 <= t - began < second * 5 + 5)
        rps.append((second * 5 + 2.5, n / 5))
    warm = [(t, m) for t, m in memory if t > 60] or memory
    statuses = {}
    for _, s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    known = list(soak.sessions) + list(soak.opaque)
    called = [soak.flaky.calls.get(k, 0) for k in known]
    windows = max(1.0, seconds / TTL)
    per_window = sum(called) / max(1, sum(1 for c in called if c)) / windows
    print(f"soak: {seconds:.0f} s, {total} requests ({total / seconds:.0f}/s), {CLIENTS} clients, "
          f"{len(soak.publishes)} policy publishes")
    print(f"  statuses: {dict(sorted(statuses.items(), key=str))}")
    print(f"  crashes and traps: {0 if alive else 1} Envoy exits, {traps} trap/panic lines in its log (want 0)")
    print(f"  wrong decisions: {len(wrong)} (want 0); transport errors: {errors}")
    for w in wrong[:10]:
        print(f"    {w}")
    print(f"  Envoy memory: {memory[0][1] / 2**20:.1f} MiB at start, {memory[-1][1] / 2**20:.1f} MiB at the end; "
          f"slope after the first minute {slope_per_minute(warm) / 1024:+.1f} KiB/min (want flat)")
    by_minute = [f"{m / 2**20:.1f}" for t, m in memory if int(t) % 60 < 5]
    print(f"  Envoy memory by minute (MiB): {' '.join(by_minute)}")
    print(f"  validation callouts per session per {TTL} s TTL window: {per_window:.2f} "
          f"(injected: {soak.flaky.injected}; failures are retried after 1 s, so a little over 1)")
    plot(BUILD / "soak.svg", [(t, m) for t, m in memory], rps)
    print("  wrote build/soak.svg")
    if not alive or traps or wrong or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
