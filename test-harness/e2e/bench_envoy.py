"""Requests per second and latency through real Envoy, seven configurations in one run: no filter,
Envoy's native jwt_authn + rbac doing the same token checks, the Wasm floor (bench/floor: reads
one header, sets one), playbook-guard (Wasm) on the session-cache-hit path, the same with
`stats_window_ms` (its remembered allows' stats counted a window at a time), the dynamic-module
floor (filter/native built with its `floor` feature: the same read-one, set-one) and playbook-guard's
native build (the dynamic module) on the same path. A script for `make bench`,
not a test (pytest does not collect it: the name does not start with test_ and it defines no
test_ functions).

Every Envoy runs the bootstrap conftest.py starts from (envoy/envoy.yaml, loopback ports picked per
run), with one worker and a `direct_response` route, so neither an upstream nor a second worker is
in the measurement; only http_filters differ. Each Envoy is pinned to CPU 0 and wrk (-t1) to CPU 1,
so the load generator does not take the proxy's core. Each playbook-guard build asks the harness's
validation-service stand-in about the session once (its cache is its Envoy's); every measured
request is then a cache hit:
JWT verified, policy decided, no callout. Each round runs every configuration once, one after the
other, each round starting one configuration further along; the figures are the medians of the
rounds. Before measuring, each configuration must answer the benchmark request 200 and refuse it
without a token (401/403), so a filter that is not
in the chain, or a native filter that checks nothing, cannot pass as a fast one.

Prints each round, then a table of medians with the ratios, the latency each filter adds and
Envoy's CPU time per request (read from /proc around each wrk run), the ratios again by that CPU
time, and writes the medians and every round to build/bench.json (drawn by `bench-plot` as build/bench.svg).

    .venv/bin/python test-harness/e2e/bench_envoy.py [--duration 8] [--rounds 3] [--connections 16]
"""

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402
from conftest import ROOT, SECRET, Envoy, ValidationService, free_port, http, plugin_config  # noqa: E402

FLOOR_WASM = Path(os.environ.get("PLAYBOOK_GUARD_FLOOR_WASM", ROOT / "build" / "playbook_guard_floor.wasm"))
# The dynamic-module floor has the product's file name (it is the same crate), so Envoy finds it
# through a search path of its own: this file's directory.
NATIVE_FLOOR = Path(os.environ.get("PLAYBOOK_GUARD_NATIVE_FLOOR",
                                   ROOT / "build" / "native-floor" / "libplaybook_guard_native.so"))
SID = "bench-1"
ISSUER, AUDIENCE = "https://noetl.local", "noetl-gateway"
REQUEST_PATH = "/api/catalog/data/daily_load/ui_schema"  # view on data/** : analyst is allowed
DIRECT_BODY = "ok\n"
ENVOY_CPU, WRK_CPU = 0, 1

# The configurations, in the order each round runs them and the table lists them.
# NATIVE is Envoy's own (C++) filters; the dynamic module's configurations are MODULE_*.
NONE, NATIVE, FLOOR, GUARD = "no filter", "jwt_authn+rbac", "floor", "playbook-guard"
# The Wasm build again, counting its remembered allows' stats a window at a time.
GUARD_WINDOWED, STATS_WINDOW_MS = "playbook-guard windowed", 1000
MODULE_FLOOR, MODULE_GUARD = "module floor", "playbook-guard native"
CONFIGS = (NONE, NATIVE, FLOOR, GUARD, GUARD_WINDOWED, MODULE_FLOOR, MODULE_GUARD)
# The Wasm configurations and Envoy's own (bench_envoy_instructions.py counts these).
WASM_CONFIGS = (NONE, NATIVE, FLOOR, GUARD, GUARD_WINDOWED)
# The playbook-guard configurations, and the floor each is measured against.
GUARDS = {GUARD: FLOOR, GUARD_WINDOWED: FLOOR, MODULE_GUARD: MODULE_FLOOR}
# The width of a configuration's name in the tables.
NAME_WIDTH = max(map(len, CONFIGS))


def answer_directly(bootstrap):
    """Every route answers itself (`direct_response` 200), so no upstream limits the rate."""
    hcm = http_connection_manager(bootstrap)
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            route.pop("route", None)
            route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_BODY}}
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"


def http_connection_manager(bootstrap):
    return bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def native_filters():
    """jwt_authn + rbac doing what playbook-guard does with this token: issuer, audience, HS256
    with the test secret (a local JWKS, `kty: oct`), the same clock skew, verified tokens cached;
    then allow only an `analyst` (the token's roles claim, from the payload jwt_authn puts in
    metadata) on a data/ playbook path."""
    key = base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "oct", "alg": "HS256", "k": key}]}
    jwt_authn = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"noetl": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "local_jwks": {"inline_string": json.dumps(jwks)},
            "clock_skew_seconds": 60,
            "forward": True,
            "payload_in_metadata": "jwt_payload",
            "jwt_cache_config": {"jwt_cache_size": 100},
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "noetl"}}],
    }
    analyst = {"metadata": {
        "filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": "jwt_payload"}, {"key": "roles"}],
        "value": {"list_match": {"one_of": {"string_match": {"exact": "analyst"}}}},
    }}
    rbac = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"analyst on data/": {
            "permissions": [{"url_path": {"path": {"prefix": "/api/catalog/data/"}}}],
            "principals": [analyst],
        }}},
    }
    return [{"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
            {"name": "envoy.filters.http.rbac", "typed_config": rbac}]


def with_native_filters(bootstrap):
    answer_directly(bootstrap)
    http_connection_manager(bootstrap)["http_filters"][:0] = native_filters()


def with_floor(bootstrap):
    """conftest's Wasm filter entry, loading the floor's module instead of playbook-guard's."""
    answer_directly(bootstrap)
    wasm = http_connection_manager(bootstrap)["http_filters"][0]["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(FLOOR_WASM)
    wasm["name"] = wasm["root_id"] = wasm["vm_config"]["vm_id"] = "floor"


def start_envoy(name, tmp, service_port, launcher=()):
    """The Envoy of configuration `name`, with one worker, answering directly (`launcher`: what
    runs Envoy, e.g. Valgrind)."""
    guard = plugin_config(hold_headers_for_body=True)
    guard["validation"] = {"cluster": "noetl_validation"}
    plugin, customize, build = {
        NONE: (None, answer_directly, "wasm"), NATIVE: (None, with_native_filters, "wasm"),
        FLOOR: ({}, with_floor, "wasm"), GUARD: (guard, answer_directly, "wasm"),
        GUARD_WINDOWED: ({**guard, "stats_window_ms": STATS_WINDOW_MS}, answer_directly, "wasm"),
        MODULE_FLOOR: ({}, answer_directly, "native"), MODULE_GUARD: (guard, answer_directly, "native"),
    }[name]
    module_dir = NATIVE_FLOOR.parent if name == MODULE_FLOOR else None
    return Envoy(tmp, plugin, upstream_port=free_port(), concurrency=1, clusters={"noetl_validation": service_port},
                 customize=customize, launcher=launcher, build=build, module_dir=module_dir)


def start_envoys(tmp, service_port, envoys):
    """One Envoy per configuration into `envoys` (so the caller stops those started if one
    fails)."""
    for name in CONFIGS:
        envoys[name] = start_envoy(name, tmp, service_port)


def mint_token(secret=SECRET, **changes):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "1", "sid": SID, "roles": ["analyst"],
              "iat": now, "exp": now + 3600}
    claims.update(changes)
    return jwt.encode(claims, secret, algorithm="HS256")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsed wrk duration {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out):
    def need(pattern):
        m = re.search(pattern, out, re.MULTILINE)
        if not m:
            raise RuntimeError(f"wrk output has no match for {pattern!r}:\n{out}")
        return m

    result = {
        "rps": float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "requests": int(need(r"^\s*(\d+) requests in ").group(1)),
        "p50": to_ms(need(r"^\s+50%\s+(\S+)").group(1)),
        "p99": to_ms(need(r"^\s+99%\s+(\S+)").group(1)),
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(map(int, errors.groups())) if errors else 0
    return result


def cpu_ns(pid):
    """The CPU time process `pid` has run, all its threads together, in nanoseconds (the first
    field of each thread's /proc schedstat: time on a CPU, not time waiting for one)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between the listing and the read
    return total


def run_wrk(url, token, duration, connections, pin, envoy_pid=None):
    """One wrk run; with `envoy_pid`, also the CPU time that Envoy spent per request (`cpu_us`)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           "-H", f"Authorization: Bearer {token}", url]
    if pin:
        cmd = ["taskset", "-c", str(WRK_CPU), *cmd]
    cpu_before = cpu_ns(envoy_pid) if envoy_pid else 0
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu_spent = cpu_ns(envoy_pid) - cpu_before if envoy_pid else 0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = parse_wrk(proc.stdout)
    if result["non2xx"]:
        raise RuntimeError(f"wrk saw {result['non2xx']} non-2xx/3xx responses; the request was not allowed "
                           f"every time:\n{proc.stdout}")
    if result["socket_errors"]:
        raise RuntimeError(f"wrk saw socket errors:\n{proc.stdout}")
    if envoy_pid and result["requests"]:
        result["cpu_us"] = cpu_spent / 1000 / result["requests"]
    return result


def pin_envoy(envoy):
    """Every thread of the running Envoy onto ENVOY_CPU (threads it starts later inherit it)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(ENVOY_CPU), str(envoy.proc.pid)],
                   check=True, capture_output=True)


def status(envoy, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http(envoy.url + REQUEST_PATH, headers=headers).status


def check_envoy(name, envoy, token):
    """The benchmark request is allowed; without a token only the unfiltered Envoy lets it
    through; the two that check tokens refuse what playbook-guard refuses."""
    for _ in range(5):
        resp = http(envoy.url + REQUEST_PATH, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and resp.body == DIRECT_BODY, (name, resp.status, resp.body, envoy.log())
    anonymous = status(envoy)
    if name == NONE:
        assert anonymous == 200, f"{name}, no token: {anonymous}, expected 200"
    else:
        assert anonymous in (401, 403), f"{name}, no token: {anonymous}, expected 401 or 403: not in the chain?"
    if name in (NATIVE, *GUARDS):
        refused = {"another secret": mint_token(secret=SECRET + "x"), "another issuer": mint_token(iss="https://x"),
                   "another audience": mint_token(aud="x"), "expired": mint_token(exp=int(time.time()) - 3600)}
        for what, bad in refused.items():
            got = status(envoy, bad)
            # jwt_authn answers a wrong audience 403, playbook-guard 401: refused either way.
            assert got in (401, 403), f"{name}, token with {what}: {got}, expected 401 or 403"
    if name == NATIVE:
        # The policy half: the role and the playbook path both count.
        assert status(envoy, mint_token(roles=["viewer"])) == 403, f"{name}: a viewer must get 403"
        system = http(envoy.url + "/api/catalog/system/reset/ui_schema", headers={"Authorization": f"Bearer {token}"})
        assert system.status == 403, f"{name}: a system/ playbook must get 403, got {system.status}"


def median_of(rounds):
    return {k: statistics.median(r[k] for r in rounds) for k in ("rps", "p50", "p99", "cpu_us")}


def ratios(med):
    """The ratios of requests/s the README reads (the issue's goals for the native build among
    them), by the key build/bench.json gives each."""
    rps = {name: m["rps"] for name, m in med.items()}
    return {"guard_over_floor": rps[GUARD] / rps[FLOOR],
            "guard_windowed_over_floor": rps[GUARD_WINDOWED] / rps[FLOOR],
            "guard_over_native": rps[GUARD] / rps[NATIVE],
            "guard_over_none": rps[GUARD] / rps[NONE],
            "module_guard_over_module_floor": rps[MODULE_GUARD] / rps[MODULE_FLOOR],
            "module_guard_over_native": rps[MODULE_GUARD] / rps[NATIVE],
            "module_guard_over_none": rps[MODULE_GUARD] / rps[NONE]}


def cpu_ratios(med):
    """The same ratios read from Envoy's CPU time per request: how many requests one core of
    Envoy's serves, with what else runs on the machine (wrk's scheduling, a neighbour on the
    host) left out. A saturated Envoy's req/s is the inverse of its CPU time per request, so
    the two agree on a quiet machine; on a busy one this is the steadier."""
    return ratios({name: {"rps": 1 / m["cpu_us"]} for name, m in med.items()})


# The issue's goals for the native build, on the cache-hit path: (ratio, at least, what it says).
GOALS = (("module_guard_over_native", 1.3, "playbook-guard native / jwt_authn+rbac"),
         ("module_guard_over_none", 0.85, "playbook-guard native / no filter"))


def print_table(rounds, med):
    none = med[NONE]
    print(f"\n{'median of ' + str(rounds):<{NAME_WIDTH + 1}}{'req/s':>10}{'vs none':>9}{'vs floor':>10}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}{'CPU us':>8}")
    for name in CONFIGS:
        m = med[name]
        added = ("", "") if name == NONE else (f"{m['p50'] - none['p50']:+.3f}", f"{m['p99'] - none['p99']:+.3f}")
        # Each playbook-guard build against its own floor; the rest against the Wasm floor.
        floor = med[GUARDS.get(name, FLOOR)]
        print(f"{name:<{NAME_WIDTH + 1}}{m['rps']:>10.0f}{m['rps'] / none['rps']:>9.3f}{m['rps'] / floor['rps']:>10.3f}"
              f"{m['p50']:>9.3f}{m['p99']:>9.3f}{added[0]:>9}{added[1]:>9}{m['cpu_us']:>8.2f}")
    print("(CPU us: Envoy's CPU time per request, all its threads, microseconds)\n")
    r, c = ratios(med), cpu_ratios(med)
    print(f"{'ratio':<60}{'by req/s':>9}{'by CPU':>9}")
    for key, what in (("guard_over_floor", "playbook-guard / floor"),
                      ("guard_over_native", "playbook-guard / jwt_authn+rbac"),
                      ("guard_windowed_over_floor", f"playbook-guard windowed (stats_window_ms {STATS_WINDOW_MS}) / floor"),
                      ("module_guard_over_module_floor", "playbook-guard native / module floor")):
        print(f"{what:<60}{r[key]:>9.3f}{c[key]:>9.3f}")
    for key, goal, what in GOALS:
        verdict = "met" if r[key] >= goal else "NOT met"
        print(f"{what:<60}{r[key]:>9.3f}{c[key]:>9.3f}   goal >= {goal} by req/s: {verdict}")


def report(args, pinned, results, med):
    """What build/bench.json holds: the set-up, then per configuration its medians and rounds."""
    def figures(r):
        return {"rps": r["rps"], "p50_ms": r["p50"], "p99_ms": r["p99"], "cpu_us": r["cpu_us"],
                **({"requests": r["requests"]} if "requests" in r else {})}

    return {
        "setup": {"duration_s": args.duration, "connections": args.connections, "rounds": args.rounds,
                  "pinned": pinned, "path": REQUEST_PATH, "envoy_concurrency": 1, "wrk_threads": 1},
        # `floor`: the floor a playbook-guard build is drawn against (bench-plot); none for the rest.
        "configurations": [{"name": name, "median": figures(med[name]), "rounds": [figures(r) for r in results[name]],
                            **({"floor": GUARDS[name]} if name in GUARDS else {})}
                           for name in CONFIGS],
        "ratios": ratios(med),
        "cpu_ratios": cpu_ratios(med),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration (default 3)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench.json",
                        help="where the figures go (default build/bench.json)")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print("bench_envoy: wrk (HTTP load generator) is not on PATH; install it with\n"
              "    apt-get install -y wrk      (sudo if not root; apt-get update first if needed)",
              file=sys.stderr)
        return 2
    for path in (conftest.WASM, FLOOR_WASM, conftest.NATIVE, NATIVE_FLOOR, conftest.CLI,
                 conftest.VALIDATION_SERVICE, conftest.ENVOY):
        if not Path(path).exists():
            print(f"bench_envoy: {path} is missing; run `make build` and `make {FLOOR_WASM.relative_to(ROOT)} "
                  f"{NATIVE_FLOOR.relative_to(ROOT)}` (or `make bench`) first", file=sys.stderr)
            return 2
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    if not pinned:
        print("bench_envoy: fewer than two CPUs (or no taskset): Envoy and wrk are not pinned, and share a core",
              file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="bench-envoy-"))
    sessions = tmp / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({SID: {"user_id": 1, "roles": ["analyst"]}}))

    service = None
    envoys = {}
    try:
        service = ValidationService(sessions)
        start_envoys(tmp, service.port, envoys)
        for envoy in envoys.values():
            envoy.wait_ready()
            if pinned:
                pin_envoy(envoy)

        token = mint_token()
        for name, envoy in envoys.items():
            check_envoy(name, envoy, token)  # each playbook-guard's also warms its session cache: one callout
        warm = service.calls(SID)
        assert warm == len(GUARDS), f"warm-up: {warm} callouts for {SID}, expected {len(GUARDS)} (one per build)"
        # A short unmeasured burst on each, so no measured run is a cold one.
        for envoy in envoys.values():
            run_wrk(envoy.url + REQUEST_PATH, token, 1, args.connections, pinned)

        before = {g: (envoys[g].counter("allowed"), envoys[g].counter("cache_hits")) for g in GUARDS}
        pinning = f"Envoy on CPU {ENVOY_CPU}, wrk on CPU {WRK_CPU}" if pinned else "not pinned"
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, Envoy --concurrency 1, {pinning}; "
              f"GET {REQUEST_PATH} (direct_response 200); {args.rounds} rounds, configurations in turn, "
              "each round starting one further along\n")
        results = {name: [] for name in CONFIGS}
        for rnd in range(1, args.rounds + 1):
            # On a shared machine the place in a round counts: the same module run twice in a
            # row has come out 5 to 8% apart. Rotating the order spreads that over all of them.
            start = (rnd - 1) % len(CONFIGS)
            for name in CONFIGS[start:] + CONFIGS[:start]:
                r = run_wrk(envoys[name].url + REQUEST_PATH, token, args.duration, args.connections, pinned,
                            envoy_pid=envoys[name].proc.pid)
                results[name].append(r)
                print(f"  round {rnd} {name:<{NAME_WIDTH}} {r['rps']:>9.0f} req/s   p50 {r['p50']:7.3f} ms   "
                      f"p99 {r['p99']:7.3f} ms   {r['cpu_us']:6.2f} us CPU   ({r['requests']} requests)", flush=True)

        callouts = service.calls(SID)
        assert callouts == warm, f"{callouts - warm} callouts for {SID} during the load, expected none"
        counted = {}
        for g in GUARDS:
            measured = sum(r["requests"] for r in results[g])
            # The windowed configuration's last counts arrive with its window's end.
            deadline = time.monotonic() + 3 * STATS_WINDOW_MS / 1000
            while envoys[g].counter("allowed") - before[g][0] < measured and time.monotonic() < deadline:
                time.sleep(0.1)
            allowed = envoys[g].counter("allowed") - before[g][0]
            counted[g] = (allowed, envoys[g].counter("cache_hits") - before[g][1])
            assert allowed >= measured, f"{g} allowed {allowed} < {measured} requests wrk completed"

        med = {name: median_of(rs) for name, rs in results.items()}
        print_table(args.rounds, med)
        for g, (allowed, hits) in counted.items():
            print(f"{g} counters during the measured runs: allowed {allowed}, cache_hits {hits}")
        print(f"callouts for {SID}: {callouts}, one per build, all of it the warm-up")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report(args, pinned, results, med), indent=2) + "\n")
        print(f"wrote {args.output}")
        return 0
    finally:
        for envoy in envoys.values():
            envoy.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
