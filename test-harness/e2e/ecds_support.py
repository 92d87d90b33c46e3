"""Envoy with playbook-guard's configuration from ECDS (a watched file), for test_ecds.py.

The bootstrap is `playbook-guard render --output bootstrap-ecds` and every policy reaches Envoy
through `playbook-guard publish`, exactly as an operator runs them, with `--build` naming the build
(the .wasm or the native module); only the ports, the .wasm path, the module's directory and the
watched file's place are the test's own.
"""

import http.client as httpclient
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import jwt

from conftest import CLI, ENVOY, NATIVE, ROOT, SECRET, WASM, free_port, http, wait_envoy_ready, without_validation

FILTER = "playbook-guard"
ECDS_STATS = f"extension_config_discovery.http_filter.{FILTER}."


def hs_token(roles, sub="42"):
    now = int(time.time())
    claims = {"iss": "https://noetl.local", "aud": "noetl-gateway", "sub": sub, "sid": f"ecds-{sub}",
              "roles": roles, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def cli(*args, check=True, env_extra=None):
    """Runs the CLI from the repository root with the test's secret in its environment."""
    env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET, **(env_extra or {}))
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                          check=check)


def filter_config(tmp):
    """envoy/filter-config.yaml without its validation service: these tests are about policy
    updates, so roles come from the token (as conftest's plugin_config does)."""
    import yaml

    config = without_validation(yaml.safe_load((ROOT / "envoy" / "filter-config.yaml").read_text()))
    path = Path(tmp) / "filter-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def policy_file(tmp, version, analyst_globs=("data/**",)):
    """NoETL's default policy with another `version` and the analyst's globs replaced."""
    text = (ROOT / "policies" / "noetl-default.yaml").read_text()
    text = text.replace('version: "2026-11-23.1"', f'version: "{version}"')
    globs = ", ".join(f'"{g}"' for g in analyst_globs)
    text = text.replace('{ permissions: [execute, view], playbooks: ["data/**"] }',
                        f"{{ permissions: [execute, view], playbooks: [{globs}] }}")
    path = Path(tmp) / f"policy-{version}.yaml"
    path.write_text(text)
    return path


# Where each build keeps the filter's JSON configuration inside an ECDS resource's typed_config.
PLUGIN_FIELD = {"wasm": ("config", "configuration"), "native": ("filter_config",)}
# The prefix Envoy gives each build's own stats.
STATS_PREFIX = {"wasm": "wasmcustom.", "native": "dynamicmodulescustom."}


def plugin_holder(typed_config, build):
    """The `StringValue` (a dict with "value") holding the filter's JSON in a resource of `build`."""
    for key in PLUGIN_FIELD[build]:
        typed_config = typed_config[key]
    return typed_config


class EcdsEnvoy:
    """Envoy whose filter configuration is the ECDS file `ecds_path`, replaced by `publish`;
    `build` is the filter's build ("wasm" or "native") every file is rendered for."""

    def __init__(self, tmp, upstream_port, concurrency=2, build="wasm"):
        self.build = build
        self.tmp = Path(tmp)
        self.port, self.admin_port = free_port(), free_port()
        self.ecds_path = self.tmp / "ecds" / f"{FILTER}.yaml"
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.filter_config = filter_config(self.tmp)
        bootstrap = cli("render", "--output", "bootstrap-ecds", "--ecds-path", self.ecds_path,
                        "--config", self.filter_config, "--build", build,
                        "--listen-port", self.port, "--admin-port", self.admin_port,
                        "--upstream-port", upstream_port).stdout
        self.config_path = self.tmp / "envoy-ecds.yaml"
        self.config_path.write_text(bootstrap)
        self.log_path = self.tmp / "envoy.log"
        self.concurrency = concurrency
        self.proc = None

    @property
    def build_args(self):
        """The CLI's arguments that name the build Envoy loads (publish, sync-noetl)."""
        return ["--build", self.build, "--wasm", str(WASM)]

    @property
    def module(self):
        """The file of the build under test (the .wasm or the native module)."""
        return NATIVE if self.build == "native" else WASM

    def stat_name(self, name):
        """The filter's own stat `name` under this build's prefix."""
        return f"{STATS_PREFIX[self.build]}playbook_guard.{name}"

    def publish(self, policy):
        """`playbook-guard publish`; returns the completed process (check=False)."""
        return cli("publish", "--policy", policy, "--config", self.filter_config, "--to", self.ecds_path,
                   *self.build_args, check=False)

    def start(self, timeout=60):
        # The native module is found as lib<name>.so in this directory; the Wasm build ignores it.
        env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(NATIVE.parent))
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
             "--use-dynamic-base-id", "--log-level", "warn",
             "--component-log-level", "wasm:info,dynamic_modules:info,config:info"],
            env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, cwd=self.tmp,
        )
        wait_envoy_ready(self.proc, self.admin, self.log, timeout)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stats(self):
        """Every stat as name -> value (text readouts keep their quotes stripped)."""
        out = {}
        for line in http(self.admin + "/stats").body.splitlines():
            key, _, value = line.partition(": ")
            out[key] = value.strip('"')
        return out

    def ecds(self, name):
        return self.stats().get(ECDS_STATS + name)

    def ecds_count(self, name):
        return int(self.ecds(name) or 0)

    def wait_for(self, predicate, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def memory(self):
        """Envoy's heap, from the admin /memory endpoint (bytes)."""
        mem = json.loads(http(self.admin + "/memory").body)
        return {k: int(mem[k]) for k in ("allocated", "heap_size", "pageheap_unmapped", "pageheap_free")}

    def rss(self):
        """The process's resident set (bytes), which includes the Wasm VMs' linear memory."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


class Load:
    """A bounded request loop on keep-alive connections, from `threads` threads.

    Each thread sends its requests in turn until `stop()` or the bound (`max_seconds`,
    `max_requests` in all) and records (sent, received, path, status); a connection error is
    recorded as status 0.
    """

    def __init__(self, port, requests, threads=4, max_seconds=15, max_requests=30000):
        self.port, self.requests, self.threads = port, requests, threads
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.results = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = []

    def _run(self, offset):
        conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=10)
        deadline = time.monotonic() + self.max_seconds
        i = offset
        while not self._stop.is_set() and time.monotonic() < deadline:
            path, headers = self.requests[i % len(self.requests)]
            i += 1
            sent = time.monotonic()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, httpclient.HTTPException):
                status = 0
                conn.close()
                conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self._lock:
                self.results.append((sent, time.monotonic(), path, status))
                if len(self.results) >= self.max_requests:
                    self._stop.set()
        conn.close()

    def start(self):
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self):
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return sorted(self.results)
