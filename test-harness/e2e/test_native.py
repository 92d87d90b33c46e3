"""The native build (an Envoy dynamic module) in the pinned Envoy: it is built for that Envoy's
ABI. A module built for another ABI version still loads, with only a warning in Envoy's log, so
the log is what these tests read."""

import re

import yaml

from conftest import NATIVE, ROOT, Envoy, http, plugin_config
from ecds_support import cli
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


def test_envoy_native_ecds_yaml_is_the_ecds_bootstrap_with_the_modules_type(tmp_path, native_module, monkeypatch):
    """The native build's ECDS example: envoy-ecds.yaml accepting the module's type, as the CLI
    renders it for `--build native`, valid with a file `publish --build native` wrote."""
    from native_bootstrap import NATIVE_TYPE, native

    monkeypatch.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE.parent))
    text = (ROOT / "envoy" / "envoy-native-ecds.yaml").read_text()
    shipped = yaml.safe_load(text)
    wasm = yaml.safe_load((ROOT / "envoy" / "envoy-ecds.yaml").read_text())
    assert shipped == native(wasm), "re-render: python3 envoy/render_examples.py"
    assert shipped == yaml.safe_load(cli("render", "--output", "bootstrap-ecds", "--build", "native").stdout)
    hcm = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["config_discovery"]["type_urls"] == [NATIVE_TYPE]
    # The bootstrap names build/ecds/playbook-guard.yaml relative to Envoy's working directory.
    published = cli("publish", "--build", "native", "--to", tmp_path / "build" / "ecds" / "playbook-guard.yaml")
    assert "published policy version" in published.stdout
    (resource,) = yaml.safe_load((tmp_path / "build" / "ecds" / "playbook-guard.yaml").read_text())["resources"]
    typed = resource["typed_config"]
    assert typed["@type"] == NATIVE_TYPE
    assert typed["dynamic_module_config"] == {"name": "playbook_guard_native", "do_not_close": True}
    assert yaml.safe_load(typed["filter_config"]["value"])["hold_headers_for_body"] is True
    validate(text, tmp_path, cwd=tmp_path, name="envoy-native-ecds.yaml")
