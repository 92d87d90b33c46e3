"""Every Envoy configuration in envoy/: current with the CLI that renders it, accepted by
`envoy --mode validate`, and (for the Kubernetes and Istio examples) serving decisions in a real
Envoy with the built filter."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ENVOY, ROOT, SECRET, WASM, http, istio_http_filter, without_validation
from ecds_support import EcdsEnvoy, cli, hs_token

ENVOY_DIR = ROOT / "envoy"
K8S = ENVOY_DIR / "k8s"
ISTIO = ENVOY_DIR / "istio"
K8S_ECDS_PATH = "/etc/playbook-guard/filter/playbook-guard.yaml"
K8S_WASM = "/etc/playbook-guard/wasm/playbook_guard.wasm"
# In the Pod, NoETL's server (127.0.0.1:8082) is both the upstream and the validation service.
K8S_RENDER = ["--listen-address", "0.0.0.0", "--listen-port", "8080", "--upstream-port", "8082",
              "--validation-port", "8082", "--admin-port", "9901", "--ecds-path", K8S_ECDS_PATH]
# Every YAML file in envoy/ and what it is; a new one must be added here, and so gets checked.
KNOWN = {
    "filter-config.yaml": "filter configuration (checked through every render below)",
    "demo-sessions.yaml": "the validation stand-in's sessions for make run (not an Envoy config)",
    "envoy.yaml": "bootstrap",
    "envoy-ecds.yaml": "bootstrap",
    "envoy-native.yaml": "bootstrap of the native build (checked in test_native.py)",
    "envoy-native-ecds.yaml": "bootstrap of the native build through ECDS (checked in test_native.py)",
    "k8s/envoy-bootstrap.configmap.yaml": "configmap with a bootstrap",
    "k8s/filter.configmap.yaml": "configmap with an ECDS file",
    "k8s/secret.yaml": "secret",
    "k8s/deployment.yaml": "kubernetes",
    "k8s/kustomization.yaml": "kubernetes",
    "k8s/noetl-sync/kustomization.yaml": "kubernetes",
    "k8s/noetl-sync/deployment.patch.yaml": "kubernetes (checked with the sync overlay)",
    "k8s/noetl-sync/database.secret.yaml": "secret",
    "k8s/noetl-sync/filter-config.configmap.yaml": "configmap with the filter configuration",
    "istio/envoyfilter.yaml": "envoyfilter",
    "istio/pod.yaml": "kubernetes",
    **{f"providers/{idp}.yaml": "a provider example (compiled and run in test_providers.py)"
       for idp in ("auth0", "okta", "entra", "cognito", "keycloak")},
}
ANALYST = {"Authorization": f"Bearer {hs_token(['analyst'])}"}


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def configmap(path, key):
    (doc,) = docs(path)
    assert doc["kind"] == "ConfigMap"
    return doc["data"][key]


def validate(config_text, tmp_path, cwd=None, name="envoy.yaml"):
    """`envoy --mode validate` on a configuration; returns Envoy's output on success."""
    path = Path(tmp_path) / name
    path.write_text(config_text)
    env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET=SECRET)
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
                            capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=120)
    assert result.returncode == 0 and " OK" in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_every_yaml_file_in_envoy_is_known_and_checked():
    found = {str(p.relative_to(ENVOY_DIR)) for p in ENVOY_DIR.rglob("*.yaml")}
    assert found == set(KNOWN), "add new files to KNOWN and give them a check"


@pytest.mark.parametrize("path, args", [
    ("envoy.yaml", ["--output", "bootstrap"]),
    ("envoy-ecds.yaml", ["--output", "bootstrap-ecds"]),
])
def test_rendered_bootstraps_are_current(path, args):
    assert (ENVOY_DIR / path).read_text() == cli("render", *args).stdout, f"re-render envoy/{path}"


def test_kubernetes_configmaps_are_current():
    boot = cli("render", "--output", "bootstrap-ecds", *K8S_RENDER).stdout
    assert configmap(K8S / "envoy-bootstrap.configmap.yaml", "envoy.yaml") == boot
    ecds = cli("render", "--output", "ecds", "--wasm", K8S_WASM).stdout
    assert configmap(K8S / "filter.configmap.yaml", "playbook-guard.yaml") == ecds


def test_kubernetes_sync_overlay_feeds_the_watched_file_from_noetl_tables():
    """envoy/k8s/noetl-sync: sync-noetl writes the ECDS file the Pod's Envoy watches, merging
    each import into the repository's filter configuration, with arguments the CLI accepts."""
    sync = K8S / "noetl-sync"
    assert configmap(sync / "filter-config.configmap.yaml", "filter-config.yaml") == \
        (ENVOY_DIR / "filter-config.yaml").read_text(), "re-render: python3 envoy/render_examples.py"
    (patch,) = docs(sync / "deployment.patch.yaml")
    spec = patch["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    flag = lambda name: args[args.index(name) + 1]  # noqa: E731
    assert args[0] == "sync-noetl"
    assert flag("--to") == K8S_ECDS_PATH and flag("--wasm") == K8S_WASM
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["filter"] == str(Path(K8S_ECDS_PATH).parent)
    assert flag("--config") == mounts["sync-config"] + "/filter-config.yaml"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["filter"]["emptyDir"] == {} and volumes["filter"]["configMap"] is None
    assert volumes["sync-config"]["configMap"]["name"] == "playbook-guard-filter-config"
    assert [e["name"] for e in container["env"]] == ["PLAYBOOK_GUARD_DATABASE_URL"]
    # The container's command line, pointed at local files and an unreachable database.
    local = [str(ENVOY_DIR / "filter-config.yaml") if a == flag("--config") else a for a in args]
    result = cli(*local, "--once", check=False, env_extra={"PLAYBOOK_GUARD_DATABASE_URL":
                                                          "postgres://u:secret@127.0.0.1:1/noetl"})
    assert result.returncode == 2 and "cannot connect to postgres://u:****@127.0.0.1:1/noetl" in result.stderr, \
        result.stderr


def istio_patches():
    (doc,) = docs(ISTIO / "envoyfilter.yaml")
    assert doc["kind"] == "EnvoyFilter"
    return doc["spec"]["configPatches"]


def test_istio_envoyfilter_holds_the_head_with_the_rendered_configuration():
    """Istio's sidecar gets what render gives every other Envoy: allow_on_headers_stop_iteration
    and hold_headers_for_body, the module fetched by the Istio agent."""
    inserted, extension = istio_patches()
    assert inserted["applyTo"] == "HTTP_FILTER" and inserted["patch"]["operation"] == "INSERT_FIRST"
    assert inserted["match"]["context"] == "SIDECAR_INBOUND"
    discovery = inserted["patch"]["value"]["config_discovery"]
    # Until istiod's extension configuration arrives the listener waits, never serves unguarded.
    assert discovery["config_source"] == {"ads": {}, "initial_fetch_timeout": "0s"}
    assert extension["applyTo"] == "EXTENSION_CONFIG"
    assert extension["patch"]["value"]["name"] == inserted["patch"]["value"]["name"]
    typed = extension["patch"]["value"]["typed_config"]
    assert typed["@type"] in discovery["type_urls"]
    code = typed["config"]["vm_config"].pop("code")
    assert code["remote"]["http_uri"]["uri"].startswith("oci://"), code
    (rendered,) = yaml.safe_load(cli("render", "--output", "ecds").stdout)["resources"]
    del rendered["typed_config"]["config"]["vm_config"]["code"]
    assert typed == rendered["typed_config"], "re-render: python3 envoy/render_examples.py"
    assert typed["config"]["allow_on_headers_stop_iteration"] is True
    assert typed["config"]["failure_policy"] == "FAIL_CLOSED"
    assert json.loads(typed["config"]["configuration"]["value"])["hold_headers_for_body"] is True


def test_istio_envoyfilter_validates(tmp_path):
    boot = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = istio_http_filter(with_validation=True)
    validate(yaml.safe_dump(boot), tmp_path)


def test_local_bootstrap_validates(tmp_path):
    # Relative to the repository: build/playbook_guard.wasm is loaded and configured.
    validate((ENVOY_DIR / "envoy.yaml").read_text(), tmp_path)


def test_ecds_bootstrap_validates_with_a_published_file(tmp_path):
    # The bootstrap names build/ecds/playbook-guard.yaml relative to Envoy's working directory;
    # publish it there in a scratch directory, so the repository's file is validated unchanged.
    published = cli("publish", "--to", tmp_path / "build" / "ecds" / "playbook-guard.yaml", "--wasm", WASM)
    assert "published policy version" in published.stdout
    validate((ENVOY_DIR / "envoy-ecds.yaml").read_text(), tmp_path, cwd=tmp_path, name="envoy-ecds.yaml")


def test_kubernetes_bootstrap_validates(tmp_path):
    ecds = tmp_path / "filter" / "playbook-guard.yaml"
    ecds.parent.mkdir()
    ecds.write_text(configmap(K8S / "filter.configmap.yaml", "playbook-guard.yaml"))
    boot = configmap(K8S / "envoy-bootstrap.configmap.yaml", "envoy.yaml")
    # The mount point exists only in the Pod: point at the same file here.
    validate(boot.replace(K8S_ECDS_PATH, str(ecds)).replace("/etc/playbook-guard/filter", str(ecds.parent)),
             tmp_path)


@pytest.mark.parametrize("source", ["k8s/filter.configmap.yaml", "ecds"])
def test_ecds_files_validate_as_inline_filters(tmp_path, source):
    """The filter configuration an ECDS file carries, put inline in the local bootstrap."""
    if source == "ecds":
        text = cli("render", "--output", "ecds", "--wasm", WASM).stdout
    else:
        text = configmap(ENVOY_DIR / source, "playbook-guard.yaml")
    resource = yaml.safe_load(text)["resources"][0]
    typed = resource["typed_config"]
    typed["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
    boot = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = {"name": resource["name"], "typed_config": typed}
    validate(yaml.safe_dump(boot), tmp_path)


def test_kubernetes_sidecar_serves_decisions(tmp_path, upstream):
    """The Pod's Envoy as the ConfigMaps configure it, with loopback ports and local paths."""
    envoy = EcdsEnvoy(tmp_path, upstream)
    boot = yaml.safe_load(configmap(K8S / "envoy-bootstrap.configmap.yaml", "envoy.yaml"))
    listener = boot["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=envoy.port)
    boot["admin"]["address"]["socket_address"]["port_value"] = envoy.admin_port
    cluster = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    cluster["endpoint"]["address"]["socket_address"]["port_value"] = upstream
    source = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    paths = source["config_discovery"]["config_source"]["path_config_source"]
    envoy.ecds_path.parent.mkdir(parents=True)
    paths.update(path=str(envoy.ecds_path), watched_directory={"path": str(envoy.ecds_path.parent)})
    envoy.config_path.write_text(yaml.safe_dump(boot))
    ecds = yaml.safe_load(configmap(K8S / "filter.configmap.yaml", "playbook-guard.yaml"))
    config = ecds["resources"][0]["typed_config"]["config"]
    config["vm_config"]["code"]["local"]["filename"] = str(WASM)
    # No NoETL server here: roles come from the token instead of the validation service.
    plugin = without_validation(json.loads(config["configuration"]["value"]))
    config["configuration"]["value"] = json.dumps(plugin)
    envoy.ecds_path.write_text(json.dumps(ecds))
    clusters = {c["name"] for c in boot["static_resources"]["clusters"]}
    assert "validation" not in plugin or clusters == {"demo_upstream", "noetl"}, clusters
    envoy.start()
    try:
        assert http(envoy.url + "/api/catalog/data/daily_load/ui_schema", headers=ANALYST).status == 200
        assert http(envoy.url + "/api/catalog/system/reset/ui_schema", headers=ANALYST).status == 403
        assert http(envoy.url + "/api/catalog/data/x/ui_schema").status == 401
        assert envoy.ecds("version_text") == "2026-11-23.1"
    finally:
        envoy.stop()


def test_istio_envoyfilter_serves_decisions(start_envoy):
    """The sidecar's filter as the EnvoyFilter configures it; roles from the token (no NoETL here)."""
    def sidecar(boot):
        hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"][0] = istio_http_filter()

    envoy = start_envoy({}, customize=sidecar)
    assert http(envoy.url + "/api/catalog/data/daily_load/ui_schema", headers=ANALYST).status == 200
    assert http(envoy.url + "/api/catalog/system/reset/ui_schema", headers=ANALYST).status == 403
    body = json.dumps({"path": "system/reset"})
    denied = http(envoy.url + "/api/execute", method="POST", body=body,
                  headers={**ANALYST, "content-type": "application/json"})
    assert denied.status == 403
    assert "hold_headers_for_body is false" not in envoy.log()


def test_kubernetes_secret_reaches_envoy_through_an_environment_variable():
    (deployment, _service) = docs(K8S / "deployment.yaml")
    envoy = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")
    (env,) = envoy["env"]
    assert env == {"name": "PLAYBOOK_GUARD_HS256_SECRET",
                   "valueFrom": {"secretKeyRef": {"name": "playbook-guard-hmac", "key": "hs256-secret"}}}
    boot = configmap(K8S / "envoy-bootstrap.configmap.yaml", "envoy.yaml") + configmap(
        K8S / "filter.configmap.yaml", "playbook-guard.yaml")
    assert "PLAYBOOK_GUARD_HS256_SECRET" in boot and "REPLACE-ME" not in boot
    mounts = {m["mountPath"] for m in envoy["volumeMounts"]}
    assert str(Path(K8S_ECDS_PATH).parent) in mounts, "the watched directory is mounted whole"
    assert all("subPath" not in m for m in envoy["volumeMounts"]), "a subPath mount never updates"
