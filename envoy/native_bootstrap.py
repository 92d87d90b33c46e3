"""The native build's Envoy configuration, derived from the Wasm one: the same bootstrap with the
filter's HTTP filter loaded as an Envoy dynamic module (build/libplaybook_guard_native.so,
found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH) instead of a Wasm module, with the same JSON
configuration. envoy/envoy-native.yaml is `native(envoy/envoy.yaml)` and envoy/envoy-native-ecds.yaml
is `native(envoy/envoy-ecds.yaml)` (render_examples.py): there the filter's configuration comes
through ECDS, so only the type it accepts changes, and `playbook-guard publish --build native`
writes the file it watches. The end-to-end tests run every native case through these."""

import json

# The module's file is lib<MODULE>.so in a directory of ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
MODULE = "playbook_guard_native"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NATIVE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"


def native_filter(name, plugin):
    """The HTTP filter `name` running the native module with configuration `plugin` (JSON text)."""
    return {"name": name, "typed_config": {
        "@type": NATIVE_TYPE,
        # Never unloaded: the module keeps a thread (its ticker) and process-wide state that must
        # not outlive its code when a configuration update drops the last filter using it.
        "dynamic_module_config": {"name": MODULE, "do_not_close": True},
        "filter_name": name,
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin},
    }}


def native(bootstrap):
    """`bootstrap` (a dict, changed in place and returned) with every playbook-guard Wasm filter
    replaced by the native module under the same name and configuration, and every filter
    configured through ECDS accepting the native module's type instead of the Wasm one."""
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                filters = network_filter["typed_config"].get("http_filters", [])
                for i, http_filter in enumerate(filters):
                    config = http_filter.get("typed_config", {}).get("config", {})
                    if http_filter.get("typed_config", {}).get("@type", "") == WASM_TYPE:
                        plugin = config["configuration"]["value"]
                        filters[i] = native_filter(http_filter["name"], plugin)
                    discovery = http_filter.get("config_discovery", {})
                    if "type_urls" in discovery:
                        discovery["type_urls"] = [NATIVE_TYPE if t == WASM_TYPE else t for t in discovery["type_urls"]]
    return bootstrap


def plugin_text(plugin):
    """A configuration given as a dict or as JSON text, as JSON text."""
    return plugin if isinstance(plugin, str) else json.dumps(plugin)


def dump(bootstrap):
    """`bootstrap` as YAML, the filter's JSON configuration as a block (readable, as in envoy.yaml)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(bootstrap, Dumper=Dumper, sort_keys=False, width=120)
