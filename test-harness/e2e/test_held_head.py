"""A denied request never reaches the upstream, in any shipped configuration.

The upstream here is the NoETL stand-in with `--answer-early`: it answers 200 as soon as it has a
request's head, before reading the body, as a server that acts on the head alone would. A route
that takes the playbook from the body is decided only once the body has arrived; every shipped
configuration (the rendered bootstrap, the sidecar filter of the Istio EnvoyFilter, and the
native build's bootstrap) holds the head until then, so a denied request never reaches that upstream at all. The opt-in
`hold_headers_for_body: false` sends the head first: the filter says so in Envoy's log.
"""

import itertools
import json
import subprocess
import sys
import time
from http.client import HTTPConnection

import pytest

from conftest import E2E, Envoy, http, istio_http_filter, plugin_config
from ecds_support import hs_token

# NoETL's run endpoint (the route table of the merged NoETL profile has it too).
EXECUTE = {"match": {"methods": ["POST"], "path": "/api/execute"},
           "authorize": {"permission": "execute", "playbook": {"json_pointer": "/path"}}}
ANALYST = hs_token(["analyst"])
PROBES = itertools.count(1)


def with_execute(plugin):
    return dict(plugin, routes=[EXECUTE, *plugin.get("routes", [])])


@pytest.fixture(scope="module")
def eager():
    """The NoETL stand-in answering on the head alone; `seen()` is every request that reached it."""
    proc = subprocess.Popen([sys.executable, str(E2E / "noetl_upstream.py"), "--port", "0", "--answer-early"],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"
    yield type("Eager", (), {"port": port, "seen": staticmethod(lambda: http(url + "/_seen").json())})
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def envoys(tmp_path_factory, eager):
    started = []

    def run(plugin, **kwargs):
        envoy = Envoy(tmp_path_factory.mktemp("held"), plugin, eager.port, **kwargs)
        started.append(envoy)
        return envoy.wait_ready()

    yield run
    for envoy in started:
        envoy.stop()


def istio_sidecar(boot):
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    sidecar = istio_http_filter()
    config = sidecar["typed_config"]["config"]["configuration"]
    config["value"] = json.dumps(with_execute(json.loads(config["value"])))
    hcm["http_filters"][0] = sidecar


SHIPPED = {
    # envoy/envoy.yaml as rendered, with the rendered plugin configuration (no hold flag set:
    # the filter's default).
    "rendered": lambda: (with_execute(plugin_config()), {}),
    # The sidecar filter the Istio EnvoyFilter installs, as the Istio agent hands it to Envoy.
    "istio-envoyfilter": lambda: ({}, {"customize": istio_sidecar}),
    # envoy/envoy-native.yaml: the native build (a dynamic module holds the head by returning
    # StopIteration; it needs no knob).
    "native": lambda: (with_execute(plugin_config()), {"build": "native"}),
}


def execute_slowly(url, playbook, pause=0.5, timeout=10):
    """POST /api/execute with the head first and the body `pause` seconds later, so an upstream
    that gets the head early has time to answer it. Returns (status or None, probe)."""
    probe = str(next(PROBES))
    body = json.dumps({"path": playbook}).encode()
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest("POST", "/api/execute")
        for name, value in (("authorization", f"Bearer {ANALYST}"), ("content-type", "application/json"),
                            ("content-length", str(len(body))), ("x-probe", probe)):
            conn.putheader(name, value)
        conn.endheaders()
        time.sleep(pause)
        try:
            conn.send(body)
            resp = conn.getresponse()
            resp.read()
            return resp.status, probe
        except (ConnectionError, TimeoutError, OSError):
            return None, probe
    finally:
        conn.close()


def probes_seen(eager):
    return {entry["probe"] for entry in eager.seen() if entry.get("probe")}


@pytest.mark.parametrize("shipped", sorted(SHIPPED))
def test_a_denied_body_never_reaches_an_upstream_that_answers_on_the_head(envoys, eager, shipped, request):
    plugin, kwargs = SHIPPED[shipped]()
    if kwargs.get("build") == "native":
        request.getfixturevalue("native_module")
    envoy = envoys(plugin, **kwargs)
    denied, probe = execute_slowly(envoy.url, "system/reset")
    assert denied == 403
    assert probe not in probes_seen(eager), "the upstream saw the head of a denied request"
    # The same request for a playbook the analyst may run reaches it, once, with the identity.
    allowed, probe = execute_slowly(envoy.url, "data/daily_load")
    assert allowed == 200
    (seen,) = [e for e in eager.seen() if e.get("probe") == probe]
    assert seen["identity"]["x-noetl-user-id"] == "42"
    assert "hold_headers_for_body is false" not in envoy.log()


def test_sending_the_head_early_is_an_opt_in_that_warns(envoys, eager):
    """`hold_headers_for_body: false` (for a host without allow_on_headers_stop_iteration): the
    head of a request the filter then denies reaches the upstream, which is why it warns."""
    envoy = envoys(with_execute(plugin_config(hold_headers_for_body=False)), stop_iteration=False)
    assert "hold_headers_for_body is false: on body-sourced routes the request head goes upstream" in envoy.log()
    _, probe = execute_slowly(envoy.url, "system/reset")
    assert probe in probes_seen(eager), "the hazard the warning names"


def test_the_default_on_a_host_that_cannot_hold_the_head_fails_closed(envoys, eager):
    """The shipped default where Envoy lacks allow_on_headers_stop_iteration (what an Istio
    WasmPlugin gives): the filter never sees the body, so the request is never decided and
    never reaches the upstream; the client waits until it gives up."""
    envoy = envoys(with_execute(plugin_config()), stop_iteration=False)
    status, probe = execute_slowly(envoy.url, "data/daily_load", pause=0.1, timeout=2)
    assert status is None
    assert probe not in probes_seen(eager)
