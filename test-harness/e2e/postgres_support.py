"""A throwaway PostgreSQL server for an end-to-end test, holding NoETL's `auth` table shapes.

`initdb` into a temporary folder, `pg_ctl start` on a free loopback port, `stop()` at the end
(the same recipe as the CLI's Rust fixture, cli/tests/support/postgres.rs). Debian's package
puts the binaries under /usr/lib/postgresql/<version>/bin, not on PATH; PostgreSQL refuses to
run as root, so as root the server runs as the package's `postgres` user (or a system user made
for it). SQL goes through `psql`, which the package ships beside `initdb`.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import free_port

SERVICE_USER = "playbook-guard-pg"

# NoETL's table shapes (schema auth), from the columns it documents.
NOETL_DDL = """
CREATE SCHEMA auth;
CREATE TABLE auth.roles (role_id serial PRIMARY KEY,
    role_name varchar(50) NOT NULL UNIQUE CHECK (role_name = lower(role_name)), description text);
CREATE TABLE auth.user_roles (user_id bigint NOT NULL, role_id int NOT NULL REFERENCES auth.roles,
    granted_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NULL, PRIMARY KEY (user_id, role_id));
CREATE TABLE auth.playbook_permissions (permission_id bigserial PRIMARY KEY,
    role_id int NOT NULL REFERENCES auth.roles, playbook_path varchar(500) NOT NULL,
    can_execute bool, can_view bool, can_modify bool,
    allow_pattern varchar(500) NULL, deny_pattern varchar(500) NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO auth.roles (role_name) VALUES ('admin'), ('developer'), ('analyst'), ('viewer');
INSERT INTO auth.playbook_permissions (role_id, playbook_path, can_execute, can_view, can_modify, allow_pattern, deny_pattern)
SELECT role_id, '%', e, v, m, a, d FROM auth.roles JOIN (VALUES
    ('admin', true, true, true, '%', NULL),
    ('developer', true, true, true, '%', 'system/%'),
    ('analyst', true, true, false, 'data/%', NULL),
    ('viewer', false, true, false, '%', NULL)) AS seed(name, e, v, m, a, d) ON role_name = seed.name;
"""


def bin_dir():
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    versions = sorted(
        (int(p.name), p / "bin") for p in Path("/usr/lib/postgresql").glob("*")
        if p.name.isdigit() and (p / "bin" / "initdb").is_file()
    )
    if not versions:
        raise RuntimeError("PostgreSQL's initdb is neither on PATH nor under /usr/lib/postgresql/*/bin: "
                           "install Debian's package postgresql (`make test` does, as root)")
    return versions[-1][1]


def run_as_user():
    if os.geteuid() != 0:
        return None
    exists = lambda name: subprocess.run(["id", name], capture_output=True).returncode == 0  # noqa: E731
    if exists("postgres"):
        return "postgres"
    if not exists(SERVICE_USER):
        subprocess.run(["useradd", "--system", "--no-create-home", SERVICE_USER], capture_output=True)
    return SERVICE_USER


class Postgres:
    def __init__(self):
        # Its own folder right under the system's temporary directory: pytest's tmp_path sits in
        # a folder only root may enter, which the server's user could not reach.
        self.dir = Path(tempfile.mkdtemp(prefix="playbook-guard-pg-"))
        self.bin = bin_dir()
        self.user = run_as_user()
        if self.user:
            subprocess.run(["chown", "-R", self.user, str(self.dir)], check=True)
        self.port = free_port()
        self.data = self.dir / "data"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program, *args):
        command = [str(self.bin / program), *map(str, args)]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, cwd=self.dir)

    def start(self):
        if not self.data.exists():
            self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.dir} -c fsync=off")
        self._run("pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self):
        command = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, capture_output=True)

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, statements):
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", statements],
                       capture_output=True, text=True, check=True)
