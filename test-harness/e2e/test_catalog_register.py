"""POST /api/catalog/register in real Envoy through the shipped route profile: modify on the path
inside the YAML, read as NoETL reads it (base64 first; the Python and the Rust server's field
orders), and on every playbook (admin only) when the YAML could be read two ways.

The upstream is the NoETL stand-in, which files an entry where NoETL's Python server would (its
answer's `path`, and `/_created`)."""

import base64
import json
import subprocess
import sys

import pytest

from conftest import E2E, Envoy, http, plugin_config
from test_envoy import bearer, hs_token


@pytest.fixture(scope="module")
def noetl(build):
    # One per build: the tests read what it created.
    proc = subprocess.Popen([sys.executable, str(E2E / "noetl_upstream.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    yield f"http://127.0.0.1:{port}", port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def renvoy(tmp_path_factory, noetl, build):
    envoy = Envoy(tmp_path_factory.mktemp("register"), plugin_config(hold_headers_for_body=True), noetl[1],
                  build=build)
    yield envoy.wait_ready()
    envoy.stop()


@pytest.fixture
def register(renvoy, noetl):
    assert http(noetl[0] + "/_reset", method="POST").status == 200

    def send(role, content):
        headers = {**bearer(hs_token([role])), "content-type": "application/json"}
        return http(renvoy.url + "/api/catalog/register", method="POST", headers=headers,
                    body=json.dumps({"content": content, "resource_type": "Playbook"}))

    send.created = lambda: [c["path"] for c in http(noetl[0] + "/_created").json()]
    return send


def playbook(path, key="path"):
    return f"apiVersion: noetl.io/v1\nkind: Playbook\nmetadata:\n  name: x\n  {key}: {path}\nworkflow:\n  - step: start\n"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def denied(answer, path):
    assert answer.status == 403, answer.body
    assert (answer.json()["playbook_path"], answer.json()["permission_type"]) == (path, "modify")


def test_a_developer_registers_data_and_not_system(register):
    ok = register("developer", playbook("data/x"))
    assert ok.status == 200, ok.body
    assert ok.json()["path"] == "data/x"
    denied(register("developer", playbook("system/x")), "system/x")
    # No modify on data/ for an analyst or a viewer.
    denied(register("analyst", playbook("data/x")), "data/x")
    denied(register("viewer", playbook("data/x")), "data/x")
    assert register.created() == ["data/x"]


def test_base64_content_both_ways(register):
    assert register("developer", b64(playbook("data/b64"))).json()["path"] == "data/b64"
    denied(register("developer", b64(playbook("system/b64"))), "system/b64")
    # Wrapped lines: only the Python server's lenient decoder takes them (the Rust server
    # refuses the text), and it files the decoded YAML's path.
    wrapped = b64(playbook("system/wrapped"))
    wrapped = "\n".join(wrapped[i:i + 76] for i in range(0, len(wrapped), 76)) + "\n"
    denied(register("developer", wrapped), "system/wrapped")
    assert register("admin", wrapped).json()["path"] == "system/wrapped"
    assert register.created() == ["data/b64", "system/wrapped"]


def test_text_that_is_base64_to_python_and_yaml_to_rust_needs_both_paths(register):
    # Python skips `:` and spaces and stops at the padding: "#\n\nmetadata: {path: system/x}";
    # the Rust server's strict decoder refuses it and reads the text's metadata.path, data/x.
    content = "IwoK: bWV0YWRhdGE6IHtwYXRoOiBzeXN0ZW0veH0=\nmetadata: {path: data/x}\n"
    denied(register("developer", content), "system/x")
    assert register("admin", content).json()["path"] == "system/x"


@pytest.mark.parametrize("content", [
    "base: &m {path: data/x}\nmetadata: *m\n",
    "metadata: {path: data/x, path: system/x}\n",
    "metadata: {<<: {path: system/x}, name: data/x}\n",
    "metadata: {path: !!str data/x}\n",
    "metadata: {path: yes, name: data/x}\n",
    "metadata: {?path: system/x, name: data/x}\n",
], ids=["alias", "duplicate-key", "merge-key", "tag", "yaml-1.1-bool", "flow-explicit-key"])
def test_yaml_read_two_ways_needs_modify_on_every_playbook(register, content):
    denied(register("developer", content), "*")
    assert register("admin", content).status == 200


def test_a_flow_key_written_with_a_question_mark_is_the_key_itself_to_noetl(register):
    # PyYAML (and libyaml, under the Rust server) read `{?path: ...}` as the key `path`.
    assert register("admin", "metadata: {?path: system/x, name: data/x}\n").json()["path"] == "system/x"


def test_python_and_rust_readings_that_part_need_both(register):
    # The Python server takes the top-level path before metadata.name (data/x); the Rust server
    # never reads it and takes metadata.name (system/y).
    content = "kind: Playbook\npath: data/x\nmetadata: {name: system/y}\n"
    denied(register("developer", content), "system/y")
    assert register("admin", content).json()["path"] == "data/x"
    both_data = "kind: Playbook\npath: data/x\nmetadata: {name: data/y}\n"
    assert register("developer", both_data).json()["path"] == "data/x"
