"""The seven configurations `make bench` measures (bench_envoy.py) do what the bench says before it
times them: each allows the benchmark request and refuses it without a token, and the native
jwt_authn + rbac and every playbook-guard configuration refuse the same bad tokens. And the bench's checks
catch a native configuration that checks less, and a filter that is not in the chain. Both floors
and the native build must have been built (`make bench` builds them)."""

import pytest
import yaml

import bench_envoy
from bench_envoy import FLOOR, GUARDS, MODULE_FLOOR, NATIVE, NONE, SID
from conftest import Envoy, ValidationService, free_port, http


@pytest.fixture(scope="module")
def bench_envoys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    sessions = tmp / "sessions.yaml"
    sessions.write_text(yaml.safe_dump({SID: {"user_id": 1, "roles": ["analyst"]}}))
    service = ValidationService(sessions)
    envoys = {}
    try:
        bench_envoy.start_envoys(tmp, service.port, envoys)
        for envoy in envoys.values():
            envoy.wait_ready()
        yield service, envoys
    finally:
        for envoy in envoys.values():
            envoy.stop()
        service.stop()


def test_every_configuration_answers_as_the_bench_requires(bench_envoys):
    service, envoys = bench_envoys
    assert list(envoys) == list(bench_envoy.CONFIGS)
    token = bench_envoy.mint_token()
    for name, envoy in envoys.items():
        bench_envoy.check_envoy(name, envoy, token)
    assert service.calls(SID) == len(GUARDS), "each playbook-guard build asked about the session once"


def test_the_module_floor_is_the_floor_not_the_product(bench_envoys):
    _, envoys = bench_envoys
    floor = envoys[MODULE_FLOOR]
    # The product would refuse this token (another secret); the floor only wants the header.
    assert bench_envoy.status(floor, bench_envoy.mint_token(secret="another")) == 200
    assert "playbook_guard" not in http(floor.admin + "/stats?filter=playbook_guard").body, \
        "the floor defines none of the product's stats"


def test_a_configuration_without_its_filter_does_not_pass_as_one(bench_envoys):
    _, envoys = bench_envoys
    with pytest.raises(AssertionError, match="not in the chain"):
        bench_envoy.check_envoy(FLOOR, envoys[NONE], bench_envoy.mint_token())
    with pytest.raises(AssertionError, match="not in the chain"):
        bench_envoy.check_envoy(MODULE_FLOOR, envoys[NONE], bench_envoy.mint_token())


def test_a_native_configuration_that_checks_no_audience_is_caught(tmp_path):
    def without_audience(bootstrap):
        bench_envoy.with_native_filters(bootstrap)
        jwt_authn = bench_envoy.http_connection_manager(bootstrap)["http_filters"][0]["typed_config"]
        del jwt_authn["providers"]["noetl"]["audiences"]

    envoy = Envoy(tmp_path, None, upstream_port=free_port(), concurrency=1, customize=without_audience)
    try:
        envoy.wait_ready()
        with pytest.raises(AssertionError, match="another audience"):
            bench_envoy.check_envoy(NATIVE, envoy, bench_envoy.mint_token())
    finally:
        envoy.stop()
