"""The NoETL stand-in (noetl_upstream.py) reads requests as NoETL-API.md says NoETL does: the
other e2e tests trust its `/_ran`, `/_read` and `/_created` to say what NoETL would have done."""

import base64
from http.client import HTTPConnection
import json
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from conftest import E2E, Response, http


def without_content_type(url, body):
    """A POST with no Content-Type at all (urllib would add a form one)."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("POST", parts.path, body=body.encode())
        resp = conn.getresponse()
        return Response(resp.status, dict(resp.getheaders()), resp.read().decode())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def noetl():
    proc = subprocess.Popen([sys.executable, str(E2E / "noetl_upstream.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    url = "http://127.0.0.1:" + proc.stdout.readline().rsplit(":", 1)[1].strip()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def post(noetl):
    assert http(noetl + "/_reset", method="POST").status == 200

    def send(path, body, ctype="application/json", **headers):
        data = body if isinstance(body, bytes) else json.dumps(body)
        if ctype is None:
            return without_content_type(noetl + path, data if isinstance(data, str) else data.decode())
        return http(noetl + path, method="POST", body=data, headers={"content-type": ctype, **headers})

    send.log = lambda name: http(f"{noetl}/_{name}").json()
    return send


@pytest.mark.parametrize("catalog_id", ["201", " 201 ", "2_01", "201.0", 201, 201.0])
def test_execute_runs_a_truthy_catalog_id_before_the_path(post, catalog_id):
    answer = post("/api/execute", {"path": "data/daily_load", "catalog_id": catalog_id})
    assert answer.status == 200 and answer.json()["status"] == "started"
    assert [r["path"] for r in post.log("ran")] == ["system/reset"]


@pytest.mark.parametrize("catalog_id", [0, "0", None, False])
def test_execute_falls_back_to_the_path_when_catalog_id_is_falsy(post, catalog_id):
    assert post("/api/execute", {"catalog_id": catalog_id, "path": "data/daily_load"}).status == 200
    assert [(r["path"], r["version"]) for r in post.log("ran")] == [("data/daily_load", 2)]


def test_execute_reads_json_as_python_does(post):
    assert post("/api/execute", b'{"path": "system/reset", "path": "data/weekly_report"}').status == 200
    assert post("/api/execute", {"path": "data/daily_load", "version": 1}, ctype=None).status == 200
    assert post("/api/execute", {"path": "data/daily_load"}, ctype="Application/Vnd.X+JSON; charset=utf-8").status == 200
    assert post("/api/execute", {"path": "system/reset"}, ctype="text/plain").status == 422
    assert post("/api/execute", {"path": "system/reset", "catalog_id": "x"}).status == 422
    assert post("/api/execute", {"path": "agents/summarize", "resource_kind": "playbook"}).status == 404
    assert [(r["path"], r["version"]) for r in post.log("ran")] == [("data/weekly_report", 1), ("data/daily_load", 1),
                                                                      ("data/daily_load", 2)]


def test_batch_runs_every_item_and_reads_as_the_rust_server(post):
    answer = post("/api/execute/batch", {"executions": [{"path": "data/daily_load"}, {"catalog_id": 0, "path": "x"},
                                                        {"catalog_id": 201}]})
    assert answer.status == 404  # catalog_id 0 wins in Rust, and there is no entry 0
    answer = post("/api/execute/batch", {"executions": [{"path": "data/daily_load"}, {"catalog_id": 201}]})
    assert answer.status == 200 and len(answer.json()["executions"]) == 2
    assert post("/api/execute/batch", b'{"executions": [], "executions": []}').status == 422
    assert post("/api/execute/batch", {"executions": []}, ctype=None).status == 415
    assert [r["path"] for r in post.log("ran")] == ["data/daily_load", "system/reset"]


def test_register_takes_the_path_from_the_yaml_base64_first(post):
    yaml = "kind: Playbook\nmetadata:\n  name: data/x\n  path: system/evil\n"
    assert post("/api/catalog/register", {"content": base64.b64encode(yaml.encode()).decode()}).status == 200
    answer = post("/api/catalog/register", {"content": "name: data/new\n"}, **{"x-noetl-user-id": "42"})
    assert answer.json()["path"] == "data/new" and answer.json()["identity"] == {"x-noetl-user-id": "42"}
    assert [c["path"] for c in post.log("created")] == ["system/evil", "data/new"]


def test_register_decodes_base64_leniently_as_python_does(post):
    """NoETL's validator calls b64decode without validate=True: line breaks and other characters
    outside the alphabet are skipped, and the first complete padding ends the input."""
    encoded = base64.b64encode(b"metadata: {path: system/x}\n").decode()
    wrapped = encoded[:8] + "\n" + encoded[8:] + "\n"
    assert post("/api/catalog/register", {"content": wrapped}).json()["path"] == "system/x"
    both = "IwoK: bWV0YWRhdGE6IHtwYXRoOiBzeXN0ZW0veH0=\nmetadata: {path: data/x}\n"
    assert post("/api/catalog/register", {"content": both}).json()["path"] == "system/x"
    assert post("/api/catalog/register", {"content": "metadata: {path: data/x}"}).json()["path"] == "data/x"
    assert post("/api/catalog/register", {"content": "path: data/p\nmetadata: {name: data/n}"}).json()["path"] == "data/p"
    assert post("/api/catalog/register", {"content": "metadata: not-a-mapping"}).status == 500


def test_catalog_reads(post):
    assert post("/api/catalog/resource", {"catalog_id": "201", "path": "data/daily_load"}).json()["path"] == "system/reset"
    assert post("/api/catalog/resource", {"catalog_id": 0, "path": "data/daily_load"}).status == 404
    assert post("/api/catalog/resource", {"path": "data/daily_load", "version": "latest"}).json()["version"] == 2
    assert {e["path"] for e in post("/api/catalog/list", {}).json()["entries"]} >= {"system/reset", "data/daily_load"}
    assert post("/api/catalog/list", {"path": "system/reset"}).json()["entries"][0]["catalog_id"] == "201"
    assert [r["paths"][:1] for r in post.log("read")] == [["system/reset"], ["data/daily_load"], ["data/daily_load"],
                                                          ["system/reset"]]


def test_mcp_jsonrpc_runs_on_tools_call_and_reads_on_tools_list(post):
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"a": 1}}}
    assert post("/api/mcp/playbook/system%2Freset/jsonrpc", call).json()["result"]["status"] == "started"
    listing = post("/api/mcp/playbook/data/daily_load/jsonrpc", dict(call, method="tools/list"))
    assert listing.json()["result"]["tools"]
    assert post("/api/mcp/playbook/data/daily_load/jsonrpc", dict(call, method="nope")).status == 200
    assert [r["path"] for r in post.log("ran")] == ["system/reset"]
    assert [r["paths"] for r in post.log("read")] == [["data/daily_load"]]
