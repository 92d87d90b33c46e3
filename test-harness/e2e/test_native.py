"""The native build (an Envoy dynamic module) in the pinned Envoy: it is built for that Envoy's
ABI. A module built for another ABI version still loads, with only a warning in Envoy's log, so
the log is what these tests read."""

import re

import yaml

from conftest import NATIVE, ROOT, Envoy, http, plugin_config
from test_configs import validate


def start_native(tmp_path, upstream, **kwargs):
    # The ABI check is logged by the dynamic_modules component at debug level.
    return Envoy(tmp_path, plugin_config(), upstream, build="native", log_levels="dynamic_modules:debug",
                 **kwargs).wait_ready()


def test_the_module_loads_with_the_abi_version_of_the_pinned_envoy(tmp_path, upstream, native_module):
    envoy = start_native(tmp_path, upstream)
    try:
        assert http(envoy.url + "/health").status == 200, "a public route, through the native filter"
        log = envoy.log()
        matched = re.search(r"Dynamic module ABI version (\S+) matched", log)
        assert matched, f"Envoy did not report a matching ABI version:\n{log}"
        assert "is deprecated" not in log, f"the module's ABI version does not match this Envoy's:\n{log}"
        assert matched.group(1) == "v0.2.0"
    finally:
        envoy.stop()


def test_the_native_stats_are_the_wasm_builds_names_under_envoys_prefix(tmp_path, upstream, native_module):
    envoy = start_native(tmp_path, upstream)
    try:
        assert http(envoy.url + "/api/catalog/list", method="POST").status == 401
        stats = http(envoy.admin + "/stats?filter=playbook_guard").body
        assert "dynamicmodulescustom.playbook_guard.unauthenticated: 1" in stats, stats
        assert "dynamicmodulescustom.playbook_guard.policy_version_hash" in stats, stats
    finally:
        envoy.stop()


def test_envoy_native_yaml_is_envoy_yaml_with_the_module(tmp_path, native_module, monkeypatch):
    from native_bootstrap import native

    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE.parent))
    wasm = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    assert yaml.safe_load((ROOT / "envoy" / "envoy-native.yaml").read_text()) == native(wasm), (
        "re-render: python3 envoy/render_examples.py")
    validate((ROOT / "envoy" / "envoy-native.yaml").read_text(), tmp_path)
