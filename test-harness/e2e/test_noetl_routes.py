"""The shipped NoETL route profile in real Envoy: NoETL's own paths and body shapes, decided for
the default roles (envoy/filter-config.yaml + policies/noetl-default.yaml).

The upstream is the demo echo: a 200 means the request reached it, with the body intact."""

import json

import pytest

from conftest import http
from test_envoy import bearer, hs_token

ROLES = ("admin", "developer", "analyst", "viewer")


def post(envoy, path, body, role, content_type="application/json"):
    headers = {**bearer(hs_token([role])), "content-type": content_type}
    return http(envoy.url + path, method="POST", headers=headers,
                body=body if isinstance(body, str) else json.dumps(body))


def get(envoy, path, role):
    return http(envoy.url + path, headers=bearer(hs_token([role])))


def statuses(call):
    return {role: call(role).status for role in ROLES}


def expect(admin, developer, analyst, viewer):
    return {"admin": admin, "developer": developer, "analyst": analyst, "viewer": viewer}


def test_execute_by_path(body_envoy):
    ok = post(body_envoy, "/api/execute", {"path": "data/daily_load", "workload": {"day": 1}}, "analyst")
    assert ok.status == 200, ok.body
    assert ok.json()["body"] == json.dumps({"path": "data/daily_load", "workload": {"day": 1}})
    denied = post(body_envoy, "/api/execute", {"path": "system/reset"}, "developer")
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/reset")


@pytest.mark.parametrize("catalog_id", [123, "123", " 12 ", "1_000", True])
def test_execute_by_catalog_id_needs_execute_on_every_playbook(body_envoy, catalog_id):
    body = {"path": "data/x", "catalog_id": catalog_id}
    got = statuses(lambda role: post(body_envoy, "/api/execute", body, role))
    assert got == expect(200, 403, 403, 403)
    denied = post(body_envoy, "/api/execute", body, "analyst").json()
    assert (denied["playbook_path"], denied["permission_type"]) == ("*", "execute")


@pytest.mark.parametrize("catalog_id", [None, ""])
def test_a_catalog_id_no_server_takes_leaves_the_choice_to_path(envoy, catalog_id):
    body = {"path": "data/x", "catalog_id": catalog_id}
    assert post(envoy, "/api/execute", body, "analyst").status == 200


@pytest.mark.parametrize("catalog_id", [0, False])
def test_a_catalog_id_only_the_python_server_leaves_to_path_is_looked_up(envoy, catalog_id):
    # The Rust server runs catalog row 0 for `catalog_id: 0`; with no resolver, every playbook.
    body = {"path": "data/x", "catalog_id": catalog_id}
    assert statuses(lambda r: post(envoy, "/api/execute", body, r)) == expect(200, 403, 403, 403)


@pytest.mark.parametrize("field", [{"execution_pool": "system"}, {"dedup": {"key": "k"}}, {"parent_execution_id": 1}])
def test_how_noetl_runs_a_playbook_is_for_the_restricted_roles(envoy, field):
    # The Rust server sends the run's commands to `execution_pool` (the `system` pool's workers
    # for a data/ playbook), and its runtimes set dedup and parent_execution_id.
    body = {"path": "data/x", **field}
    assert statuses(lambda r: post(envoy, "/api/execute", body, r)) == expect(200, 403, 403, 403)
    denied = post(envoy, "/api/execute", body, "analyst").json()
    assert denied["reason"] == "restricted", denied


@pytest.mark.parametrize("path", ["/data/x", "data//x", "data/x/", "data/./x"])
def test_a_playbook_name_not_in_normal_form_is_refused(envoy, path):
    # NoETL compares names as written: each is another catalog entry than data/x there.
    resp = post(envoy, "/api/execute", {"path": path}, "admin")
    assert (resp.status, resp.json()["reason"]) == (400, "invalid_playbook_path"), resp.body


def test_ai_analysis_without_a_body_runs_the_default_playbook(envoy):
    # FastAPI reads no body as the optional body's None: ops/execution_ai_analyze, and view on
    # the run (every playbook without a resolver). Only admin holds both.
    assert statuses(lambda r: post(envoy, "/api/executions/42/analyze/ai", "", r)) == expect(200, 403, 403, 403)
    assert post(envoy, "/api/executions/42/analyze/ai", " ", "admin").status == 400


def test_a_batch_with_one_forbidden_item_is_refused(body_envoy):
    allowed = {"executions": [{"path": "data/a"}, {"path": "data/b", "workload": {}}]}
    assert post(body_envoy, "/api/execute/batch", allowed, "analyst").status == 200
    one_bad = {"executions": [{"path": "data/a"}, {"path": "system/b"}, {"path": "data/c"}]}
    denied = post(body_envoy, "/api/execute/batch", one_bad, "analyst")
    assert (denied.status, denied.json()["playbook_path"]) == (403, "system/b")


def test_catalog_resource_with_path_and_with_catalog_id(envoy):
    by_path = {"path": "system/reset", "version": "latest"}
    assert statuses(lambda r: post(envoy, "/api/catalog/resource", by_path, r)) == expect(200, 403, 403, 200)
    # Any non-empty catalog_id wins on this route, 0 included.
    by_id = {"path": "data/x", "catalog_id": 0}
    assert statuses(lambda r: post(envoy, "/api/catalog/resource", by_id, r)) == expect(200, 403, 403, 200)


def test_catalog_list_needs_view_on_everything_whatever_its_path(envoy):
    # NoETL's Rust server ignores `path` here and lists every entry, content included.
    for body in ({"resource_type": "playbook"}, {"resource_type": "playbook", "path": "data/x"}):
        assert statuses(lambda r: post(envoy, "/api/catalog/list", body, r)) == expect(200, 403, 403, 200), body
    # The agents' list (the Python server's only) narrows to `path`.
    narrowed = {"path": "data/x"}
    assert statuses(lambda r: post(envoy, "/api/catalog/agents/list", narrowed, r)) == expect(200, 200, 200, 200)
    assert statuses(lambda r: post(envoy, "/api/catalog/agents/list", {}, r)) == expect(200, 403, 403, 200)


def test_catalog_register_needs_modify_on_the_path_in_the_yaml(envoy):
    """More in test_catalog_register.py."""
    body = {"content": "apiVersion: noetl.io/v1\nkind: Playbook\nmetadata: {name: x, path: data/x}\n"}
    assert statuses(lambda r: post(envoy, "/api/catalog/register", body, r)) == expect(200, 200, 403, 403)


def test_mcp_tools_call_executes_and_tools_list_views(envoy):
    path = "/api/mcp/playbook/system/tool/jsonrpc"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert statuses(lambda r: post(envoy, path, call, r)) == expect(200, 403, 403, 403)
    assert statuses(lambda r: post(envoy, path, listing, r)) == expect(200, 403, 403, 200)
    other = post(envoy, path, {"jsonrpc": "2.0", "id": 3, "method": "resources/read"}, "admin")
    assert (other.status, other.json()["reason"]) == (403, "jsonrpc_method")
    data_call = post(envoy, "/api/mcp/playbook/data/tool/jsonrpc", call, "analyst")
    assert data_call.status == 200, data_call.body


def test_ai_explain_needs_view_on_the_target_and_execute_on_its_playbook(envoy):
    path = "/api/catalog/playbooks/explain/ai"
    default = {"path": "data/x"}  # runs ops/playbook_ai_explain, which an analyst may not execute
    assert statuses(lambda r: post(envoy, path, default, r)) == expect(200, 200, 403, 403)
    named = {"path": "data/x", "explanation_playbook_path": "data/explain"}
    assert statuses(lambda r: post(envoy, path, named, r)) == expect(200, 200, 200, 403)


def test_worker_routes_are_blocked_for_everyone(envoy):
    for role in ROLES:
        resp = post(envoy, "/api/events", {"execution_id": "1", "event_type": "x"}, role)
        assert (resp.status, resp.json()["reason"]) == (403, "blocked"), role
        assert post(envoy, "/api/internal/outbox/claim", {}, role).status == 403


def test_raw_sql_is_for_admins_only(envoy):
    body = {"query": "select 1"}
    got = statuses(lambda r: post(envoy, "/api/postgres/execute", body, r))
    assert got == expect(200, 403, 403, 403)
    assert post(envoy, "/api/postgres/execute", body, "developer").json()["reason"] == "restricted"


def test_executions_need_view_on_every_playbook(envoy):
    assert statuses(lambda r: get(envoy, "/api/executions", r)) == expect(200, 403, 403, 200)


def test_unmapped_and_retired_routes_are_refused(envoy):
    for role in ROLES:
        assert get(envoy, "/api/nothing/here", role).json()["reason"] == "no_route"
        assert post(envoy, "/api/run/playbook", {"path": "data/x"}, role).status == 403


def test_trailing_slash_and_percent_encoded_variants_are_guarded_as_the_route(envoy):
    # Starlette redirects `/api/execute/` to `/api/execute` and decodes `%65` before routing.
    for path in ("/api/execute/", "/api/%65xecute", "/api/%65xecute/"):
        assert statuses(lambda r: post(envoy, path, {"path": "system/x"}, r)) == expect(200, 403, 403, 403), path
        assert statuses(lambda r: post(envoy, path, {"path": "data/x"}, r)) == expect(200, 200, 200, 403), path
    assert statuses(lambda r: get(envoy, "/api/catalog/system/x/ui_schema/", r)) == expect(200, 403, 403, 200)


def test_a_body_route_with_another_content_type_is_415(envoy):
    resp = post(envoy, "/api/execute", "path=data/x", "analyst", content_type="application/x-www-form-urlencoded")
    assert (resp.status, resp.json()["error"]) == (415, "unsupported_media_type")
    vendor = post(envoy, "/api/execute", {"path": "data/x"}, "analyst", content_type="Application/Vnd.Noetl+JSON; v=1")
    assert vendor.status == 200


def test_session_only_routes_need_a_session_and_no_playbook(envoy):
    for path in ("/docs", "/openapi.json", "/api/runtime/contract", "/"):
        assert statuses(lambda role: get(envoy, path, role)) == expect(200, 200, 200, 200), path
        assert http(envoy.url + path).status == 401, path
    check = lambda role: post(envoy, "/api/auth/check-playbook-access", {"playbook_path": "system/x"}, role)  # noqa: E731
    assert statuses(check) == expect(200, 200, 200, 200)


@pytest.mark.parametrize("suite", [".system/x", "..system/x", "%2Esystem/x", "data/x."])
def test_a_suite_id_noetl_would_trim_into_another_name_is_refused(envoy, suite):
    # NoETL strips `.` and `/` from a suite id's ends: `.system/x` is the suite of `system/x`.
    headers = {**bearer(hs_token(["developer"])), "content-type": "application/json"}
    put = http(envoy.url + "/api/playbook-tests/suites/" + suite, method="PUT", headers=headers, body="{}")
    assert (put.status, put.json()["reason"]) == (400, "invalid_playbook_path")
    assert get(envoy, "/api/playbook-tests/suites/data/x", "developer").status == 200


def test_the_gateways_own_token_checks_reach_it_without_a_header(envoy):
    # NoETL's GUI sends the session token in the body (validate, check-access) or, from an
    # EventSource, in the query string; the gateway checks it itself. The servers' checks, which
    # take a caller's `credential`, still want a session.
    body = json.dumps({"session_token": "0123456789abcdef0123456789abcdef", "playbook_path": "data/x"})
    json_type = {"content-type": "application/json"}
    for path in ("/api/auth/validate", "/api/auth/check-access"):
        resp = http(envoy.url + path, method="POST", headers=json_type, body=body)
        assert resp.status == 200, (path, resp.body)
        assert resp.json()["body"] == body
    events = http(envoy.url + "/events?session_token=0123456789abcdef0123456789abcdef&client_id=c1")
    assert events.status == 200, events.body
    refused = http(envoy.url + "/api/auth/check-playbook-access", method="POST", headers=json_type, body=body)
    assert (refused.status, refused.json()["reason"]) == (401, "missing_token")
