"""Re-renders the Envoy configurations derived from envoy/filter-config.yaml and the default
policy: envoy/envoy-ecds.yaml, envoy/envoy-native.yaml and envoy/envoy-native-ecds.yaml (the native
build's), the Kubernetes ConfigMaps (the noetl-sync overlay's copy of the
filter configuration too), and the Istio EnvoyFilter's
extension configuration. Run after changing either (test_configs.py fails until then):

    python3 envoy/render_examples.py            # uses target/debug/playbook-guard

(envoy/envoy.yaml is `playbook-guard render > envoy/envoy.yaml`.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(os.environ.get("PLAYBOOK_GUARD_CLI", ROOT / "target" / "debug" / "playbook-guard"))
K8S_ECDS_PATH = "/etc/playbook-guard/filter/playbook-guard.yaml"
K8S_WASM = "/etc/playbook-guard/wasm/playbook_guard.wasm"
# Where the Istio agent fetches the module from (istio/envoyfilter.yaml); a placeholder.
ISTIO_WASM_URL = "oci://ghcr.io/noetl/playbook-guard:0.1.0"
# In the Pod, NoETL's server (127.0.0.1:8082) is both the upstream and the validation service.
K8S_RENDER = ["--listen-address", "0.0.0.0", "--listen-port", "8080", "--upstream-port", "8082",
              "--validation-port", "8082", "--admin-port", "9901", "--ecds-path", K8S_ECDS_PATH]


def render(*args):
    # Secrets are Envoy's; a stand-in of the right length lets render check everything else.
    env = dict(os.environ, PLAYBOOK_GUARD_HS256_SECRET="x" * 64)
    return subprocess.run([str(CLI), "render", *args], check=True, capture_output=True, text=True, cwd=ROOT,
                          env=env).stdout


def indent(text, n):
    return "".join((" " * n + line if line.strip() else line) for line in text.splitlines(True))


def replace_block(path, marker, block):
    """Keeps the hand-written head of `path` up to and including `marker`; replaces the rest."""
    text = path.read_text()
    head = text[: text.index(marker) + len(marker)]
    path.write_text(head + block)


def main():
    (ROOT / "envoy" / "envoy-ecds.yaml").write_text(render("--output", "bootstrap-ecds"))
    import yaml  # the e2e requirements' PyYAML (.venv)
    from native_bootstrap import dump, native

    native_boot = native(yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text()))
    (ROOT / "envoy" / "envoy-native.yaml").write_text(
        "# Rendered by envoy/render_examples.py from envoy.yaml (the native build); edit the sources, not this file.\n"
        "# Run with ENVOY_DYNAMIC_MODULES_SEARCH_PATH=build (make build makes build/libplaybook_guard_native.so).\n"
        + dump(native_boot))
    native_ecds = native(yaml.safe_load((ROOT / "envoy" / "envoy-ecds.yaml").read_text()))
    (ROOT / "envoy" / "envoy-native-ecds.yaml").write_text(
        "# Rendered by envoy/render_examples.py from envoy-ecds.yaml (the native build); edit the sources, not this file.\n"
        "# Run with ENVOY_DYNAMIC_MODULES_SEARCH_PATH=build; `playbook-guard publish --build native` writes the\n"
        "# watched file build/ecds/playbook-guard.yaml.\n"
        + dump(native_ecds))
    k8s = ROOT / "envoy" / "k8s"
    replace_block(k8s / "envoy-bootstrap.configmap.yaml", "  envoy.yaml: |\n",
                  indent(render("--output", "bootstrap-ecds", *K8S_RENDER), 4))
    replace_block(k8s / "filter.configmap.yaml", "  playbook-guard.yaml: |\n",
                  indent(render("--output", "ecds", "--wasm", K8S_WASM), 4))
    replace_block(k8s / "noetl-sync" / "filter-config.configmap.yaml", "  filter-config.yaml: |\n",
                  indent((ROOT / "envoy" / "filter-config.yaml").read_text(), 4))
    # The ECDS resource as Istio's EXTENSION_CONFIG patch wants it, with the module fetched by the
    # Istio agent; render keeps allow_on_headers_stop_iteration and hold_headers_for_body in it.
    ecds = json.loads(render("--output", "ecds").split("\n", 1)[1])
    typed = ecds["resources"][0]["typed_config"]
    typed["config"]["vm_config"]["code"] = {"remote": {"http_uri": {"uri": ISTIO_WASM_URL, "timeout": "30s"}}}
    # JSON is YAML, and keeps every string a string (a version such as 1.0 stays "1.0").
    replace_block(ROOT / "envoy" / "istio" / "envoyfilter.yaml", "          typed_config:\n",
                  indent(json.dumps(typed, indent=2) + "\n", 12))


if __name__ == "__main__":
    sys.exit(main())
