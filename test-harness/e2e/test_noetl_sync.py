"""`playbook-guard sync-noetl` keeps real Envoy in step with NoETL's permission tables.

A real PostgreSQL holds NoETL's `auth` tables with its seed rows; `sync-noetl` imports them
every interval and publishes through the ECDS file Envoy watches. Changing a row changes a
request's answer within the interval, with no failed request under load; while the database
is down the last policy keeps serving. Run with `-s` to see the measured times.
"""

import subprocess
import time

import pytest

from conftest import CLI, http
from ecds_support import EcdsEnvoy, Load, hs_token
from postgres_support import NOETL_DDL, Postgres

INTERVAL = 1.0
ANALYST = {"Authorization": f"Bearer {hs_token(['analyst'])}"}
DEVELOPER = {"Authorization": f"Bearer {hs_token(['developer'], sub='43')}"}
# NoETL's seed lets the analyst see data/% only.
PROBE = "/api/catalog/system/sync-probe/ui_schema"
STEADY = "/api/catalog/data/daily_load/ui_schema"


@pytest.fixture
def noetl_db():
    db = Postgres().start()
    try:
        db.sql(NOETL_DDL)
        yield db
    finally:
        db.remove()


@pytest.fixture
def synced_envoy(tmp_path, upstream, noetl_db, build):
    envoy = EcdsEnvoy(tmp_path, upstream, build=build)
    log = open(tmp_path / "sync.log", "w")
    sync = subprocess.Popen(
        [str(CLI), "sync-noetl", "--database-url", noetl_db.url, "--config", str(envoy.filter_config),
         "--to", str(envoy.ecds_path), *envoy.build_args, "--every", f"{int(INTERVAL * 1000)}ms"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not envoy.ecds_path.exists():
            assert sync.poll() is None and time.monotonic() < deadline, (tmp_path / "sync.log").read_text()
            time.sleep(0.05)
        envoy.start()
        yield envoy, noetl_db, lambda: (tmp_path / "sync.log").read_text()
    finally:
        sync.terminate()
        sync.wait(timeout=10)
        envoy.stop()


def status(envoy, path, headers=ANALYST):
    return http(envoy.url + path, headers=headers).status


def test_a_changed_row_changes_envoy_answer_within_the_interval_without_a_failed_request(synced_envoy):
    envoy, db, sync_log = synced_envoy
    assert status(envoy, STEADY) == 200
    assert status(envoy, PROBE) == 403
    assert status(envoy, PROBE, DEVELOPER) == 403, "the developer row's deny_pattern system/%"
    assert "(first import)" in sync_log()

    load = Load(envoy.port, [(PROBE, ANALYST), (STEADY, ANALYST)], threads=4, max_seconds=20).start()
    time.sleep(1.0)
    changed_at = time.monotonic()
    db.sql("UPDATE auth.playbook_permissions SET allow_pattern = '%' "
           "WHERE role_id = (SELECT role_id FROM auth.roles WHERE role_name = 'analyst')")
    while status(envoy, PROBE) != 200:
        assert time.monotonic() - changed_at < INTERVAL + 5, sync_log()
        time.sleep(0.02)
    elapsed = time.monotonic() - changed_at
    time.sleep(0.5)
    results = load.stop()

    failed = [r for r in results if r[3] not in (200, 403)]
    steady_denied = [r for r in results if r[2] == STEADY and r[3] != 200]
    print(f"\n[measured] sync-noetl: row change to Envoy's answer {elapsed:.2f} s "
          f"(interval {INTERVAL} s), {len(results)} requests under load, {len(failed)} failed")
    assert not failed and not steady_denied, (failed + steady_denied)[:5]
    # Within the interval, plus the publish and Envoy's reload (tens of milliseconds).
    assert elapsed < INTERVAL + 1.0, elapsed
    line = [l for l in sync_log().splitlines() if "(was " in l]
    assert len(line) == 1 and "rules 0 added, 0 removed, 1 changed" in line[0], sync_log()
    assert status(envoy, PROBE, DEVELOPER) == 403, "another role's row is untouched"


def test_while_the_database_is_down_the_last_policy_serves_and_the_import_is_retried(synced_envoy):
    envoy, db, sync_log = synced_envoy
    version = envoy.ecds("version_text")
    assert version.startswith("noetl-")
    db.stop()
    time.sleep(3 * INTERVAL + 1)
    assert status(envoy, STEADY) == 200 and status(envoy, PROBE) == 403
    assert envoy.ecds("version_text") == version
    log = sync_log()
    assert "cannot connect to postgres://postgres@127.0.0.1" in log and "retrying in" in log, log
    assert f'Envoy keeps policy "{version}"' in log, log

    db.start()
    # An exact-path row: the analyst may now view this one system playbook.
    db.sql("INSERT INTO auth.playbook_permissions (role_id, playbook_path, can_view) "
           "SELECT role_id, 'system/sync-probe', true FROM auth.roles WHERE role_name = 'analyst'")
    deadline = time.monotonic() + 10  # the backoff has grown to a few seconds by now
    while status(envoy, PROBE) != 200:
        assert time.monotonic() < deadline, sync_log()
        time.sleep(0.05)
    assert "rules 1 added, 0 removed, 0 changed" in sync_log(), sync_log()
    assert status(envoy, "/api/catalog/system/other/ui_schema") == 403
