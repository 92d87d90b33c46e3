"""Policy updates on a running Envoy through ECDS from a watched file (`playbook-guard publish`),
with each build of the filter (the .wasm, and the native module as a DynamicModuleFilter).

Measured numbers are printed (run with `-s` to see them): the time from `publish` to the first
request decided by the new policy, the failed requests during a reload under load, and Envoy's
memory across repeated reloads.
"""

import hashlib
import json
import os
import time

import pytest

from conftest import WASM, http
from ecds_support import EcdsEnvoy, Load, cli, hs_token, plugin_holder, policy_file

ANALYST = {"Authorization": f"Bearer {hs_token(['analyst'])}"}
# Flips from 403 to 200 when the analyst is granted system/**.
PROBE = "/api/catalog/system/reload-probe/ui_schema"
# Allowed under every policy here: a reload must never fail it.
STEADY = "/api/catalog/data/daily_load/ui_schema"


@pytest.fixture
def ecds_envoy(tmp_path, upstream, build):
    envoy = EcdsEnvoy(tmp_path, upstream, build=build)
    first = envoy.publish(policy_file(tmp_path, "v1"))
    assert first.returncode == 0, first.stderr
    envoy.start()
    yield envoy
    envoy.stop()


def status(envoy, path, headers=ANALYST):
    return http(envoy.url + path, headers=headers).status


def report(name, **numbers):
    print(f"\n[measured] {name}: {json.dumps(numbers)}")


def test_first_policy_is_served_and_its_version_reported(ecds_envoy):
    assert status(ecds_envoy, STEADY) == 200
    assert status(ecds_envoy, PROBE) == 403
    # Envoy's own text readout carries the ECDS file's version_info, which publish sets to the
    # policy version: the exact string, per Envoy.
    assert ecds_envoy.ecds("version_text") == "v1"
    assert 'configured; policy version "v1"' in ecds_envoy.log()


def test_publish_under_load_changes_decisions_within_2s_without_5xx(ecds_envoy, tmp_path):
    v2 = policy_file(tmp_path, "v2", analyst_globs=("data/**", "system/**"))
    successes = ecds_envoy.ecds_count("update_success")
    load = Load(ecds_envoy.port, [(PROBE, ANALYST), (STEADY, ANALYST)], threads=4, max_seconds=15).start()
    time.sleep(1.5)  # steady state under the old policy first
    published_at = time.monotonic()
    result = ecds_envoy.publish(v2)
    renamed_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    assert 'published policy version "v2"' in result.stdout
    ecds_envoy.wait_for(lambda: ecds_envoy.ecds_count("update_success") > successes, what="update_success")
    time.sleep(3)  # keep the load on after the switch
    results = load.stop()

    failed = [r for r in results if r[3] == 0 or r[3] >= 500]
    steady_bad = [r for r in results if r[2] == STEADY and r[3] != 200]
    probes = [r for r in results if r[2] == PROBE]
    before = [r for r in probes if r[1] < published_at]
    new = [r for r in probes if r[0] >= published_at and r[3] == 200]
    assert before and all(r[3] == 403 for r in before), "the old policy denies the probe"
    assert new, "no request was decided by the new policy"
    first_new = min(r[1] for r in new)
    # Every probe sent 2 s after publish is decided by the new policy, on every worker.
    late = [r for r in probes if r[0] >= published_at + 2]
    assert late and all(r[3] == 200 for r in late), [r for r in late if r[3] != 200][:5]
    report("reload under load", requests=len(results), failed_5xx_or_reset=len(failed),
           publish_cli_seconds=round(renamed_at - published_at, 3),
           publish_to_first_new_decision_seconds=round(first_new - published_at, 3),
           rename_to_first_new_decision_seconds=round(first_new - renamed_at, 3),
           old_decisions_after_first_new=sum(1 for r in probes if r[0] > first_new and r[3] == 403))
    assert not failed, failed[:5]
    assert not steady_bad, steady_bad[:5]
    assert ecds_envoy.ecds("version_text") == "v2"
    assert 'configured; policy version "v2"' in ecds_envoy.log()


def test_publish_refuses_a_broken_policy_and_leaves_the_watched_file(ecds_envoy, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text('version: "v-broken"\nroles:\n  analyst:\n    allow:\n'
                      '      - { permissions: [view], playbooks: ["/system/**"] }\n')
    before = ecds_envoy.ecds_path.read_bytes()
    attempts = ecds_envoy.ecds_count("update_attempt")
    result = ecds_envoy.publish(broken)
    assert result.returncode != 0
    assert f"{broken}:5:44: roles.analyst.allow[0].playbooks[0]" in result.stderr
    assert "no leading '/'" in result.stderr
    assert ecds_envoy.ecds_path.read_bytes() == before
    assert [p.name for p in ecds_envoy.ecds_path.parent.iterdir()] == [ecds_envoy.ecds_path.name]
    time.sleep(0.5)
    assert ecds_envoy.ecds_count("update_attempt") == attempts, "nothing reached Envoy"
    assert status(ecds_envoy, PROBE) == 403


def write_ecds(envoy, text):
    """Replaces the watched file as a hand edit or another tool would: write, then rename."""
    tmp = envoy.ecds_path.with_name(".hand-edit.tmp")
    tmp.write_text(text)
    os.replace(tmp, envoy.ecds_path)


def broken_filter_config(envoy):
    """The published file with a policy the filter refuses (a glob with a leading '/')."""
    text = envoy.ecds_path.read_text()
    comment, _, body = text.partition("\n")
    doc = json.loads(body)
    config = plugin_holder(doc["resources"][0]["typed_config"], envoy.build)
    plugin = json.loads(config["value"])
    plugin["policy"]["version"] = "v-broken"
    plugin["policy"]["roles"]["analyst"]["allow"][0]["playbooks"] = ["/system/**"]
    config["value"] = json.dumps(plugin)
    doc["version_info"] = "v-broken"
    return f"{comment}\n{json.dumps(doc)}\n"


@pytest.mark.parametrize("kind, stat, logged", [
    # The filter's on_configure refuses it: Envoy rejects the update.
    ("rejected-by-filter", "update_rejected", "Filesystem config update rejected"),
    # A truncated file: Envoy cannot even read it.
    ("not-yaml", "update_failure", "Filesystem config update failure"),
])
def test_envoy_keeps_the_last_good_policy_when_a_broken_one_lands(ecds_envoy, kind, stat, logged):
    text = broken_filter_config(ecds_envoy) if kind == "rejected-by-filter" else '{"resources": [ {"@type": '
    rejected = ecds_envoy.ecds_count(stat)
    load = Load(ecds_envoy.port, [(PROBE, ANALYST), (STEADY, ANALYST)], threads=2, max_seconds=10).start()
    time.sleep(0.5)
    write_ecds(ecds_envoy, text)
    ecds_envoy.wait_for(lambda: ecds_envoy.ecds_count(stat) > rejected, what=stat)
    time.sleep(1)
    results = load.stop()
    failed = [r for r in results if r[3] == 0 or r[3] >= 500]
    wrong = [r for r in results if r[3] != {PROBE: 403, STEADY: 200}[r[2]]]
    report(f"broken policy ({kind}) under load", requests=len(results), failed_5xx_or_reset=len(failed),
           changed_decisions=len(wrong))
    assert not failed, failed[:5]
    assert not wrong, wrong[:5]
    assert ecds_envoy.ecds("version_text") == "v1"
    log = ecds_envoy.log()
    assert logged in log
    if kind == "rejected-by-filter":
        assert "configuration rejected: policy.roles.analyst.allow[0].playbooks[0]" in log
        assert "no leading '/'" in log
    # And a good policy after the broken one still goes through.
    ecds_envoy.publish(policy_file(ecds_envoy.tmp, "v3", analyst_globs=("data/**", "system/**")))
    ecds_envoy.wait_for(lambda: status(ecds_envoy, PROBE) == 200, what="v3 to be served")
    assert ecds_envoy.ecds("version_text") == "v3"


RELOADS = int(os.environ.get("PLAYBOOK_GUARD_RELOADS", "30"))


def test_memory_stays_bounded_across_repeated_reloads(ecds_envoy, tmp_path):
    policies = [policy_file(tmp_path, f"m{i}", analyst_globs=("data/**", f"team{i}/**")) for i in range(RELOADS)]

    def reload(policy):
        successes = ecds_envoy.ecds_count("update_success")
        assert ecds_envoy.publish(policy).returncode == 0
        ecds_envoy.wait_for(lambda: ecds_envoy.ecds_count("update_success") > successes, what="reload")
        # Traffic on every worker makes each one build its per-worker plugin for the new config.
        for _ in range(8):
            assert status(ecds_envoy, STEADY) == 200

    # Warm up: the first few reloads grow pools that are then reused.
    for policy in policies[:5]:
        reload(policy)
    start_mem, start_rss = ecds_envoy.memory(), ecds_envoy.rss()
    for policy in policies[5:]:
        reload(policy)
    end_mem, end_rss = ecds_envoy.memory(), ecds_envoy.rss()
    assert ecds_envoy.ecds("version_text") == f"m{RELOADS - 1}"
    measured = RELOADS - 5
    grown = end_mem["allocated"] - start_mem["allocated"]
    report("memory across reloads", reloads=measured, allocated_start=start_mem["allocated"],
           allocated_end=end_mem["allocated"], allocated_growth_per_reload=grown // measured,
           heap_start=start_mem["heap_size"], heap_end=end_mem["heap_size"],
           rss_start=start_rss, rss_end=end_rss, rss_growth_per_reload=(end_rss - start_rss) // measured,
           build=ecds_envoy.build, module_bytes=ecds_envoy.module.stat().st_size)
    # Envoy's heap may keep a little per reload (stats, config dumps), never a copy of the plugin.
    assert grown // measured < 256 * 1024, (start_mem, end_mem)


def test_filter_reports_the_policy_version_in_one_stat(ecds_envoy, tmp_path):
    def version_stats():
        return {k: int(v) for k, v in ecds_envoy.stats().items() if "playbook_guard.policy_version" in k}

    def hashed(version):
        return int(hashlib.sha256(version.encode()).hexdigest()[:12], 16)

    key = ecds_envoy.stat_name("policy_version_hash")
    assert version_stats() == {key: hashed("v1")}
    ecds_envoy.publish(policy_file(tmp_path, "2026-11-24.2", analyst_globs=("data/**", "system/**")))
    ecds_envoy.wait_for(lambda: version_stats().get(key) == hashed("2026-11-24.2"), what="the new version's hash")
    # One gauge, whatever the number of updates: nothing accumulates per version.
    assert list(version_stats()) == [key]


def test_a_file_for_the_other_build_is_rejected_and_the_last_good_policy_serves(ecds_envoy, tmp_path):
    """The bootstrap accepts its own build's type only: a file published for the other build
    (a .wasm where the native module runs, or the reverse) never replaces the filter."""
    other = {"wasm": "native", "native": "wasm"}[ecds_envoy.build]
    rejected = ecds_envoy.ecds_count("update_rejected")
    v2 = policy_file(tmp_path, "v2-other", analyst_globs=("data/**", "system/**"))
    result = cli("publish", "--policy", v2, "--config", ecds_envoy.filter_config, "--to", ecds_envoy.ecds_path,
                 "--build", other, "--wasm", WASM, check=False)
    assert result.returncode == 0, result.stderr
    ecds_envoy.wait_for(lambda: ecds_envoy.ecds_count("update_rejected") > rejected, what="update_rejected")
    assert status(ecds_envoy, PROBE) == 403 and status(ecds_envoy, STEADY) == 200
    assert ecds_envoy.ecds("version_text") == "v1"
