"""Runs a wasm32-wasip1 program (a `cargo test` binary) under wasmtime: cargo's target runner.

`make test` sets CARGO_TARGET_WASM32_WASIP1_RUNNER to this script so the core's unit tests also
run compiled to wasm, the way the filter runs in Envoy. The wasmtime Python package ships a
prebuilt runtime, so this needs no wasmtime build.
"""

import sys

import wasmtime


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: wasi_run.py PROGRAM.wasm [ARGS...]")
    engine = wasmtime.Engine()
    module = wasmtime.Module.from_file(engine, sys.argv[1])
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = sys.argv[1:]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.inherit_env()
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit_trap:
        sys.exit(exit_trap.code)


if __name__ == "__main__":
    main()
