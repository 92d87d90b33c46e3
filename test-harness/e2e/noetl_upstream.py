"""A stand-in for NoETL's API server: its real paths and body shapes, read as NoETL reads them.

`make run` puts it behind Envoy as the upstream, and the end-to-end tests use it to assert what
NoETL WOULD have done with a request the filter let through: which playbook a run started, which
entries a read returned, which path a register created (`GET /_ran`, `/_read`, `/_created`;
`/_seen` lists every request that reached it, `POST /_reset` forgets them all). Standard library
only, plus PyYAML (in the venv) for `catalog/register`.

Served (NoETL-API.md, section 1 unless marked):
- POST /api/execute: `catalog_id` if truthy after pydantic's lax int coercion (then `path` and
  `version` are ignored), else `path` + `version` (absent or "latest": the highest);
  `resource_kind` playbook | agent restricts the kind.
- POST /api/execute/batch (the Rust server's): `{"executions": [...]}`, each item its own run;
  `catalog_id` must be a JSON integer and wins whenever present; application/json only (415),
  duplicate keys are a 422.
- POST /api/catalog/register: `content` (base64 tried first), path from the YAML's
  `metadata.path` -> `path` -> `metadata.name` -> `name` -> "unknown".
- POST /api/catalog/resource: `catalog_id` (any non-empty value, `0` included) else `path` +
  `version`; POST /api/catalog/list: `path` (exact, all versions) or every entry.
- POST /api/mcp/playbook/{path:path}/jsonrpc: `tools/call` runs, `tools/list` reads,
  `initialize` / `ping` touch nothing; errors are JSON-RPC errors with HTTP 200.
- GET /api/executions/{execution_id}: a run it started, with its playbook's `path` (404 else);
  with `/api/catalog/resource`, what the filter's `resolver` asks.
Every JSON answer carries `identity`: the `x-noetl-user-*` headers that reached it. Any other
request gets an echo of what reached it, as demo_upstream.py does.

JSON bodies are parsed when the Content-Type is absent, application/json or application/*+json
(any case, with parameters), else 422; duplicate keys: the last wins, as in Python's json.

`POST /_delay {"seconds": s}` makes it answer the requests that carry no identity headers (the
filter's own lookups) `s` seconds late, so that tests can have requests wait for a lookup.

`--answer-early` makes it answer 200 as soon as it has a request's head, before reading the
body (recording the head in `/_seen`): an upstream that acts on a request before its body is
decided.
"""

import argparse
import base64
import itertools
import json
import re
import threading
import time
from urllib.parse import unquote, urlsplit

import yaml

from demo_upstream import Echo, serve

# catalog_id -> entry. `system/` playbooks are the ones a non-admin must never reach.
CATALOG = {
    101: {"path": "data/daily_load", "version": 1, "kind": "playbook"},
    102: {"path": "data/daily_load", "version": 2, "kind": "playbook"},
    103: {"path": "data/weekly_report", "version": 1, "kind": "playbook"},
    201: {"path": "system/reset", "version": 1, "kind": "playbook"},
    202: {"path": "system/rotate_keys", "version": 1, "kind": "playbook"},
    301: {"path": "examples/hello_world", "version": 1, "kind": "playbook"},
    302: {"path": "ops/playbook_ai_explain", "version": 1, "kind": "playbook"},
    401: {"path": "agents/summarize", "version": 1, "kind": "agent"},
}
IDENTITY_PREFIX = "x-noetl-user-"
JSON_TYPE = re.compile(r"^application/(json|[^/;\s]+\+json)$")
MCP_JSONRPC = re.compile(r"^/api/mcp/playbook/(.+)/jsonrpc$")
EXECUTION = re.compile(r"^/api/executions/([^/]+)$")


class Unprocessable(Exception):
    """A request NoETL answers 422 (FastAPI's validation error), or another status."""

    def __init__(self, detail, status=422):
        super().__init__(detail)
        self.detail, self.status = detail, status


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.ids = itertools.count(900000001)
        self.catalog = {k: dict(v, content=f"path: {v['path']}\n") for k, v in CATALOG.items()}
        self.reset()

    def reset(self):
        self.ran, self.read, self.created, self.seen = [], [], [], []
        self.delay = 0.0

    def record(self, kind, entry):
        with self.lock:
            getattr(self, kind).append(entry)


STATE = State()


def pydantic_int(value):
    """An `Optional[int]` field as pydantic 2 reads it in lax mode."""
    if value is None or isinstance(value, int):  # bool is an int: True -> 1, False -> 0
        return None if value is None else int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        # "12.0" is 12; Python's int() takes the underscores ("1_000") and signs pydantic takes.
        text = re.sub(r"(?<=\d)\.0*$", "", text)
        try:
            return int(text)
        except ValueError:
            pass
    raise Unprocessable(f"catalog_id: Input should be a valid integer, got {value!r}")


def entries(path=None, kind=None):
    return [dict(e, catalog_id=str(i)) for i, e in sorted(STATE.catalog.items())
            if (path is None or e["path"] == path) and (kind is None or e["kind"] == kind)]


def by_path(path, version, kind=None):
    if not isinstance(path, str):
        raise Unprocessable("path: Input should be a valid string")
    found = entries(path, kind)
    if version is None or version == "latest":
        return max(found, key=lambda e: e["version"], default=None)
    try:
        wanted = int(version)
    except (TypeError, ValueError):
        raise Unprocessable(f"version: not an integer or 'latest': {version!r}") from None
    return next((e for e in found if e["version"] == wanted), None)


def by_id(catalog_id, kind=None):
    try:
        entry = STATE.catalog.get(int(catalog_id))
    except (TypeError, ValueError):
        return None
    if entry is None or (kind is not None and entry["kind"] != kind):
        return None
    return dict(entry, catalog_id=str(int(catalog_id)))


def found(entry):
    if entry is None:
        raise Unprocessable("Catalog entry not found", 404)
    return entry


def python_execute_target(body):
    """POST /api/execute in NoETL's Python server: which catalog entry it runs."""
    kind = body.get("resource_kind")
    if kind not in (None, "playbook", "agent"):
        raise Unprocessable("resource_kind: Input should be 'playbook' or 'agent'")
    catalog_id = pydantic_int(body.get("catalog_id"))
    if catalog_id:
        return found(by_id(catalog_id, kind))
    if body.get("path") is None:
        raise Unprocessable("either catalog_id or path is required", 400)
    return found(by_path(body["path"], body.get("version"), kind))


def rust_execute_target(item):
    """One item of the Rust server's POST /api/execute/batch."""
    if not isinstance(item, dict):
        raise Unprocessable("executions[]: expected an object")
    catalog_id = item.get("catalog_id")
    if catalog_id is None:
        if not isinstance(item.get("path"), str):
            raise Unprocessable("executions[]: either catalog_id or path is required", 400)
        return found(by_path(item["path"], None))
    if isinstance(catalog_id, bool) or not isinstance(catalog_id, int):
        raise Unprocessable("catalog_id: invalid type, expected i64")
    return found(by_id(catalog_id))


def register_path(content):
    """Where POST /api/catalog/register puts `content`, and its kind, in NoETL's order: pydantic's
    `before` validator tries `base64.b64decode(content).decode("utf-8")` (lenient: characters
    outside the alphabet are skipped, the first complete padding ends it) and keeps `content` on
    any error; `coerce_numbers_to_str` then makes a number a string; PyYAML reads the text."""
    if content is None or isinstance(content, (bool, list, dict)):
        raise Unprocessable("content: Input should be a valid string")
    try:
        content = base64.b64decode(content).decode("utf-8")
    except Exception:  # noqa: BLE001 - NoETL's validator catches everything
        pass
    content = str(content)
    try:
        doc = yaml.safe_load(content) or {}
    except yaml.YAMLError as err:
        raise Unprocessable(f"Error registering resource: {err}", 500) from None
    try:
        meta = doc.get("metadata") or {}
        path = meta.get("path") or doc.get("path") or meta.get("name") or doc.get("name") or "unknown"
    except AttributeError as err:
        raise Unprocessable(f"Error registering resource: {err}", 500) from None
    return str(path), doc.get("kind")


class NoETL(Echo):
    """demo_upstream's echo, which answers every path NoETL's routes below do not take."""

    answer_early = False

    def identity(self):
        return {k.lower(): v for k, v in self.headers.items() if k.lower().startswith(IDENTITY_PREFIX)}

    def send_json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def raw_body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def json_body(self, raw, rust=False):
        ctype = (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if rust and ctype != "application/json":
            raise Unprocessable("Expected request with `Content-Type: application/json`", 415)
        if ctype and not JSON_TYPE.match(ctype):
            raise Unprocessable("Input should be a valid dictionary or object to extract fields from")

        def pairs(items):
            if rust and len({k for k, _ in items}) != len(items):
                raise Unprocessable("duplicate field")
            return dict(items)

        try:
            body = json.loads(raw or b"null", object_pairs_hook=pairs)
        except ValueError:
            raise Unprocessable("JSON decode error") from None
        if not isinstance(body, dict):
            raise Unprocessable("Input should be a valid dictionary or object to extract fields from")
        return body

    def run(self, route, entry, **extra):
        execution_id = str(next(STATE.ids))
        STATE.record("ran", {"route": route, "path": entry["path"], "version": entry["version"],
                             "catalog_id": entry["catalog_id"], "execution_id": execution_id,
                             "identity": self.identity(), **extra})
        return {"execution_id": execution_id, "status": "started", "commands_generated": 1,
                "path": entry["path"], "catalog_id": entry["catalog_id"]}

    def read(self, route, found):
        STATE.record("read", {"route": route, "paths": [e["path"] for e in found], "identity": self.identity()})

    # ---- routes ----

    def execute(self, raw):
        return self.run("/api/execute", python_execute_target(self.json_body(raw)))

    def execute_batch(self, raw):
        items = self.json_body(raw, rust=True).get("executions")
        if not isinstance(items, list) or len(items) > 1000:
            raise Unprocessable("executions: a list of at most 1000 requests")
        targets = [rust_execute_target(item) for item in items]
        return {"executions": [self.run("/api/execute/batch", e) for e in targets]}

    def register(self, raw):
        body = self.json_body(raw)
        path, kind = register_path(body.get("content"))
        kind = kind or body.get("resource_type") or "Playbook"
        with STATE.lock:
            version = 1 + max((e["version"] for e in STATE.catalog.values() if e["path"] == path), default=0)
            catalog_id = max(STATE.catalog) + 1
            STATE.catalog[catalog_id] = {"path": path, "version": version, "kind": str(kind).lower(),
                                         "content": body["content"]}
        STATE.record("created", {"path": path, "version": version, "catalog_id": str(catalog_id),
                                 "identity": self.identity()})
        return {"status": "success", "message": f"Resource '{path}' version '{version}' registered.",
                "path": path, "version": version, "catalog_id": str(catalog_id), "kind": kind}

    def late_if_anonymous(self):
        if not self.identity() and STATE.delay:
            time.sleep(STATE.delay)

    def resource(self, raw):
        self.late_if_anonymous()
        body = self.json_body(raw)
        catalog_id = body.get("catalog_id")
        if isinstance(catalog_id, bool) or not isinstance(catalog_id, (str, int, type(None))):
            raise Unprocessable("catalog_id: Input should be a valid string")
        if catalog_id is not None and str(catalog_id) != "":
            entry = found(by_id(catalog_id))
        else:
            entry = found(None if body.get("path") is None else by_path(body["path"], body.get("version")))
        self.read("/api/catalog/resource", [entry])
        return entry

    def catalog_list(self, raw):
        body = self.json_body(raw)
        path = body.get("path") or None
        found = entries(path)
        self.read("/api/catalog/list", found)
        return {"entries": found}

    def mcp_jsonrpc(self, raw, path):
        body = self.json_body(raw)
        method, rpc_id = body.get("method"), body.get("id")
        entry = by_path(path, None)
        if entry is None:
            return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32602, "message": f"no playbook {path}"}}
        if method == "tools/call":
            result = self.run("/api/mcp/playbook/jsonrpc", entry,
                              arguments=(body.get("params") or {}).get("arguments"))
        elif method == "tools/list":
            self.read("/api/mcp/playbook/jsonrpc", [entry])
            result = {"tools": [{"name": entry["path"].replace("/", "_")}]}
        elif method in ("initialize", "ping"):
            result = {}
        else:
            return {"jsonrpc": "2.0", "id": rpc_id, "error": {"code": -32601, "message": "Method not found"}}
        return {"jsonrpc": "2.0", "id": rpc_id, "result": result}

    def do_POST(self):
        path = urlsplit(self.path).path
        self.saw()
        if self.answer_early and not path.startswith("/_"):
            # Acts on the head alone: never reads the body, and closes so its bytes are not
            # taken for the next request.
            self.close_connection = True
            return self.send_json(200, {"status": "started", "answered": "before the body",
                                        "identity": self.identity()})
        routes = {"/api/execute": self.execute, "/api/execute/batch": self.execute_batch,
                  "/api/catalog/register": self.register, "/api/catalog/resource": self.resource,
                  "/api/catalog/list": self.catalog_list}
        if path == "/_reset":
            with STATE.lock:
                STATE.reset()
            return self.send_json(200, {})
        if path == "/_delay":
            STATE.delay = float(json.loads(self.raw_body())["seconds"])
            return self.send_json(200, {})
        mcp = MCP_JSONRPC.match(unquote(path))
        if path not in routes and not mcp:
            return self._answer()
        raw = self.raw_body()
        try:
            answer = routes[path](raw) if path in routes else self.mcp_jsonrpc(raw, mcp.group(1))
        except Unprocessable as err:
            return self.send_json(err.status, {"detail": err.detail, "identity": self.identity()})
        answer = dict(answer, identity=self.identity())
        self.send_json(200, answer)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in ("/_ran", "/_read", "/_created", "/_seen"):
            with STATE.lock:
                return self.send_json(200, list(getattr(STATE, path[2:])))
        run = EXECUTION.match(unquote(path))
        if run:
            self.saw()
            return self.execution(run.group(1))
        self.do_other()

    def execution(self, execution_id):
        """GET /api/executions/{execution_id}: the run, with the path of the playbook it runs."""
        self.late_if_anonymous()
        with STATE.lock:
            ran = next((r for r in STATE.ran if r["execution_id"] == execution_id), None)
        if ran is None:
            return self.send_json(404, {"detail": f"Execution '{execution_id}' not found"})
        self.send_json(200, {"execution_id": execution_id, "path": ran["path"], "version": ran["version"],
                             "catalog_id": ran["catalog_id"], "status": "RUNNING"})

    def do_other(self):
        self.saw()
        self._answer()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_other

    def saw(self):
        STATE.record("seen", {"method": self.command, "path": self.path, "identity": self.identity(),
                              "probe": self.headers.get("x-probe")})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18080, help="0 picks a free port")
    parser.add_argument("--answer-early", action="store_true", help="answer 200 before reading any body")
    args = parser.parse_args()
    NoETL.answer_early = args.answer_early
    serve(NoETL, args.port)


if __name__ == "__main__":
    main()
