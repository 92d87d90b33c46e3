"""Requests per second through real Envoy with the filter (session-cache-hit path) against the
same Envoy without it, in the same run. A script for `make bench`, not a test (pytest does not
collect it: the name does not start with test_ and it defines no test_ functions).

Both Envoys run the bootstrap conftest.py starts from (envoy/envoy.yaml, loopback ports picked per
run), with one worker each and a `direct_response` route, so neither an upstream nor a second
worker is in the measurement; the only difference is the playbook-guard entry in http_filters.
The filter asks the harness's validation-service stand-in about the session once; every
measured request is then a cache hit: JWT verified, policy decided, no callout. The load comes
from wrk (Debian package `wrk`), runs alternate (filter, no filter, ...), and the script prints
requests/s, the ratio filter / no filter and the latency the filter adds at p50 and p99.

    .venv/bin/python test-harness/e2e/bench_envoy.py [--duration 8] [--connections 16]
"""

import argparse
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
from conftest import SECRET, Envoy, ValidationService, free_port, http, plugin_config  # noqa: E402

SID = "bench-1"
REQUEST_PATH = "/api/catalog/data/daily_load/ui_schema"  # view on data/** : analyst is allowed
DIRECT_BODY = "ok\n"


def answer_directly(bootstrap):
    """Every route answers itself (`direct_response` 200), so no upstream limits the rate."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            route.pop("route", None)
            route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_BODY}}
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"


def bench_envoy(tmp, plugin, clusters):
    """conftest's Envoy on one worker, answering directly; `plugin=None` runs it without the filter."""
    envoy = Envoy(tmp, plugin, upstream_port=free_port(), concurrency=1, clusters=clusters, customize=answer_directly)
    envoy.filtered = plugin is not None
    return envoy


def mint_token():
    now = int(time.time())
    claims = {"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": "1", "sid": SID,
              "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


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


def run_wrk(url, token, duration, connections):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           "-H", f"Authorization: Bearer {token}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = parse_wrk(proc.stdout)
    if result["non2xx"]:
        raise RuntimeError(f"wrk saw {result['non2xx']} non-2xx/3xx responses; not a cache-hit run:\n"
                           f"{proc.stdout}")
    if result["socket_errors"]:
        raise RuntimeError(f"wrk saw socket errors:\n{proc.stdout}")
    return result


def check_envoy(envoy, token):
    """Both Envoys answer the benchmark request 200; only the filtered one refuses no token."""
    for _ in range(5):
        resp = http(envoy.url + REQUEST_PATH, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and resp.body == DIRECT_BODY, (resp.status, resp.body, envoy.log())
    anonymous = http(envoy.url + REQUEST_PATH).status
    expected = 401 if envoy.filtered else 200
    assert anonymous == expected, f"no token: {anonymous}, expected {expected} (filtered={envoy.filtered})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="filter/no-filter pairs (default 2)")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print("bench_envoy: wrk (HTTP load generator) is not on PATH; install it with\n"
              "    apt-get install -y wrk      (sudo if not root; apt-get update first if needed)",
              file=sys.stderr)
        return 2
    for path in (conftest.WASM, conftest.CLI, conftest.VALIDATION_SERVICE, conftest.ENVOY):
        if not Path(path).exists():
            print(f"bench_envoy: {path} is missing; run `make build venv` first", file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench-envoy-"))
    sessions = tmp / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({SID: {"user_id": 1, "roles": ["analyst"]}}))
    plugin = plugin_config(hold_headers_for_body=True)
    plugin["validation"] = {"cluster": "noetl_validation"}

    service = None
    envoys = []
    try:
        service = ValidationService(sessions)
        filtered = bench_envoy(tmp, plugin, clusters={"noetl_validation": service.port})
        envoys.append(filtered)
        plain = bench_envoy(tmp, None, clusters={"noetl_validation": service.port})
        envoys.append(plain)
        filtered.wait_ready()
        plain.wait_ready()

        token = mint_token()
        check_envoy(filtered, token)  # also warms the session cache: one callout
        check_envoy(plain, token)
        assert service.calls(SID) == 1, f"warm-up: {service.calls(SID)} callouts for {SID}, expected 1"
        # A short unmeasured wrk burst on each, so the first measured run is not a cold one.
        for envoy in (filtered, plain):
            run_wrk(envoy.url + REQUEST_PATH, token, 1, args.connections)

        allowed_before = filtered.counter("allowed")
        hits_before = filtered.counter("cache_hits")
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, Envoy --concurrency 1 (both), "
              f"GET {REQUEST_PATH} (direct_response 200), {args.rounds} rounds\n")
        results = {"filter": [], "no filter": []}
        for rnd in range(1, args.rounds + 1):
            for name, envoy in (("filter", filtered), ("no filter", plain)):
                r = run_wrk(envoy.url + REQUEST_PATH, token, args.duration, args.connections)
                results[name].append(r)
                print(f"  round {rnd} {name:<9}  {r['rps']:>10.0f} req/s   p50 {r['p50']:7.3f} ms   "
                      f"p99 {r['p99']:7.3f} ms   ({r['requests']} requests)", flush=True)

        callouts = service.calls(SID)
        measured = sum(r["requests"] for r in results["filter"])
        allowed = filtered.counter("allowed") - allowed_before
        hits = filtered.counter("cache_hits") - hits_before
        assert callouts == 1, f"{callouts} callouts for {SID} after the load, expected 1"
        assert allowed >= measured, f"filter allowed {allowed} < {measured} requests wrk completed"

        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
               for name, rs in results.items()}
        f, p = med["filter"], med["no filter"]
        print()
        print(f"{'median of ' + str(args.rounds):<14}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
        print(f"{'filter':<14}{f['rps']:>12.0f}{f['p50']:>10.3f}{f['p99']:>10.3f}")
        print(f"{'no filter':<14}{p['rps']:>12.0f}{p['p50']:>10.3f}{p['p99']:>10.3f}")
        print()
        print(f"ratio filter / no filter: {f['rps'] / p['rps']:.3f} "
              f"({(1 - f['rps'] / p['rps']) * 100:.1f}% fewer requests/s with the filter)")
        print(f"latency added by the filter: p50 {f['p50'] - p['p50']:+.3f} ms, p99 {f['p99'] - p['p99']:+.3f} ms")
        print(f"filter counters during the measured runs: allowed {allowed}, cache_hits {hits}; "
              f"callouts per session during the run: {callouts} (for {SID}, all of it the warm-up)")
        return 0
    finally:
        for envoy in envoys:
            envoy.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
