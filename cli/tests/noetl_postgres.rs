//! `import-noetl` against a real PostgreSQL holding NoETL's table shapes: the imported policy
//! must decide every (roles, playbook, action) exactly as NoETL's own check query decides it in
//! that database. PostgreSQL evaluates LIKE there, so it is the oracle.

// Helpers outside #[test] functions too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::{Command, Output};

use playbook_guard_core::path::PlaybookPath;
use playbook_guard_core::policy::{Policy, PolicyDocument};
use support::postgres::Postgres;

/// NoETL's table shapes, from the columns its schema `auth` documents.
const DDL: &str = "
CREATE SCHEMA auth;
CREATE TABLE auth.roles (
    role_id serial PRIMARY KEY,
    role_name varchar(50) NOT NULL UNIQUE CHECK (role_name = lower(role_name)),
    description text
);
CREATE TABLE auth.user_roles (
    user_id bigint NOT NULL,
    role_id int NOT NULL REFERENCES auth.roles,
    granted_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NULL,
    PRIMARY KEY (user_id, role_id)
);
CREATE TABLE auth.playbook_permissions (
    permission_id bigserial PRIMARY KEY,
    role_id int NOT NULL REFERENCES auth.roles,
    playbook_path varchar(500) NOT NULL,
    can_execute bool,
    can_view bool,
    can_modify bool,
    allow_pattern varchar(500) NULL,
    deny_pattern varchar(500) NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);";

/// A seed row: (role, allow_pattern, deny_pattern, execute, view, modify).
type SeedRow = (&'static str, &'static str, Option<&'static str>, bool, bool, bool);

/// NoETL's seed rows (each with `playbook_path` `%`).
const SEED: [SeedRow; 4] = [
    ("admin", "%", None, true, true, true),
    ("developer", "%", Some("system/%"), true, true, true),
    ("analyst", "data/%", None, true, true, false),
    ("viewer", "%", None, false, true, false),
];

/// NoETL's access check for one user, playbook and action.
const CHECK: &str = "
SELECT EXISTS (
    SELECT 1 FROM auth.user_roles ur
    JOIN auth.playbook_permissions pp ON pp.role_id = ur.role_id
    WHERE ur.user_id = $1
      AND (ur.expires_at IS NULL OR ur.expires_at > now())
      AND (pp.playbook_path = $2 OR (pp.allow_pattern IS NOT NULL AND $2 LIKE pp.allow_pattern))
      AND (pp.deny_pattern IS NULL OR $2 NOT LIKE pp.deny_pattern)
      AND CASE $3 WHEN 'execute' THEN pp.can_execute WHEN 'view' THEN pp.can_view
                  WHEN 'modify' THEN pp.can_modify ELSE false END
)";

const ACTIONS: [&str; 4] = ["execute", "view", "modify", "delete"];

/// Pattern pieces: `%`, `_`, escapes, `/`, mixed case, non-ASCII, regex metacharacters.
const PIECES: [&str; 19] = [
    "data", "system", "Data", "ops", "é", "日本", "a", "b", "/", "/", "%", "%", "_", "\\%", "\\_", "\\\\", "x.y", "-",
    "A",
];
const SEGMENTS: [&str; 14] =
    ["data", "system", "Data", "ops", "é", "日本", "a", "b", "a_b", "x.y", "load-1", "A", "systemx", "ß"];

/// xorshift64: deterministic cases, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn pattern(rng: &mut Rng) -> Vec<&'static str> {
    (0..1 + rng.below(5)).map(|_| rng.pick(&PIECES)).collect()
}

fn segment_path(rng: &mut Rng) -> String {
    (0..1 + rng.below(4)).map(|_| rng.pick(&SEGMENTS)).collect::<Vec<_>>().join("/")
}

/// A string the pattern matches, or nearly matches (a `_` that took no character or two, an
/// escaped character replaced, a letter in the other case), so the cases sit on the edges.
fn instance(rng: &mut Rng, pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    let one = |rng: &mut Rng| ['a', 'Z', 'é', '/', '_', 'x'][rng.below(6)];
    while let Some(c) = chars.next() {
        match c {
            '%' if rng.chance(50) => {}
            '%' => out.push_str(&segment_path(rng)),
            '_' => match rng.below(10) {
                0..=2 => {}
                3..=4 => out.extend([one(rng), one(rng)]),
                _ => out.push(one(rng)),
            },
            '\\' if rng.chance(20) => out.push(one(rng)),
            '\\' => out.extend(chars.next()),
            c if c.is_ascii_alphabetic() && rng.chance(10) => {
                out.push(if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
            }
            c => out.push(c),
        }
    }
    out
}

/// Only paths the filter would decide at all: it refuses (400) what it cannot normalise to
/// itself, `%` and `\` included, before any policy is asked.
fn normal(path: &str) -> bool {
    PlaybookPath::parse(path).is_ok_and(|p| p.as_str() == path)
}

fn import(url: &str, dir: &tempfile::TempDir) -> (Output, String) {
    let file = dir.path().join("noetl.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_playbook-guard"))
        .args(["import-noetl", "--database-url", url, "--output"])
        .arg(&file)
        .output()
        .unwrap();
    (out, std::fs::read_to_string(&file).unwrap_or_default())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_imported_policy_decides_as_noetl_query_does_on_generated_rows() {
    let pg = Postgres::start();
    let mut db = pg.client();
    db.batch_execute(DDL).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut roles: Vec<String> = Vec::new();
    // (role, pattern) for every pattern a row holds, to aim cases at the rows a user holds.
    let mut patterns: Vec<(String, String)> = Vec::new();
    let add_role = |db: &mut postgres::Client, name: &str| -> i32 {
        db.query_one("INSERT INTO auth.roles (role_name) VALUES ($1) RETURNING role_id", &[&name]).unwrap().get(0)
    };
    let insert = "INSERT INTO auth.playbook_permissions (role_id, playbook_path, can_execute, can_view, can_modify, \
                  allow_pattern, deny_pattern) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    for (role, allow, deny, execute, view, modify) in SEED {
        let id = add_role(&mut db, role);
        db.execute(insert, &[&id, &"%", &execute, &view, &modify, &allow, &deny]).unwrap();
        roles.push(role.into());
    }
    for r in 0..15 {
        let name = format!("gen_{r:02}");
        let id = add_role(&mut db, &name);
        roles.push(name);
        // gen_14 has no rows at all.
        for _ in 0..if r == 14 { 0 } else { 1 + rng.below(4) } {
            let allow_pieces = pattern(&mut rng);
            let allow = match rng.below(100) {
                0..=79 => Some(allow_pieces.concat()),
                80..=84 => Some(String::new()),
                _ => None,
            };
            let deny = match rng.below(100) {
                // Overlapping the allow: its first pieces, then anything.
                0..=24 => Some(format!("{}%", allow_pieces[..1 + rng.below(allow_pieces.len())].concat())),
                25..=39 => Some(pattern(&mut rng).concat()),
                40..=44 => Some(String::new()),
                _ => None,
            };
            let path = match rng.below(10) {
                0..=4 => "%".to_owned(),
                5..=8 => segment_path(&mut rng),
                _ => pattern(&mut rng).concat(),
            };
            let mut can = || match rng.below(10) {
                0..=4 => Some(true),
                5..=8 => Some(false),
                _ => None,
            };
            let (execute, view, modify) = (can(), can(), can());
            db.execute(insert, &[&id, &path, &execute, &view, &modify, &allow, &deny]).unwrap();
            patterns
                .extend([allow, deny, Some(path)].into_iter().flatten().map(|p| (roles[roles.len() - 1].clone(), p)));
        }
    }
    patterns.extend(
        SEED.iter().flat_map(|s| [Some(s.1), s.2].into_iter().flatten().map(|p| (s.0.to_owned(), p.to_owned()))),
    );

    let mut paths: Vec<String> =
        vec!["data/daily_load".into(), "system/reset".into(), "Data/x".into(), "systemx".into()];
    paths.extend((0..80).map(|_| segment_path(&mut rng)));
    paths.retain(|p| normal(p));
    let mut aimed: Vec<(String, String)> = Vec::new();
    for (role, p) in &patterns {
        // An instance the filter would refuse (a leading or doubled '/') is normalised instead:
        // still near the pattern, and a path the filter decides.
        let instances = (0..6).filter_map(|_| PlaybookPath::parse(&instance(&mut rng, p)).ok());
        aimed.extend(instances.map(|p| (role.clone(), p.as_str().to_owned())).filter(|(_, p)| normal(p)));
    }
    paths.extend(aimed.iter().map(|(_, p)| p.clone()));
    paths.sort();
    paths.dedup();

    // Users hold some roles unexpired (no expiry, or a future one) and some expired.
    let grant = "INSERT INTO auth.user_roles (user_id, role_id, expires_at) \
                 SELECT $1, role_id, now() + make_interval(days => $3) FROM auth.roles WHERE role_name = $2";
    let grant_forever =
        "INSERT INTO auth.user_roles (user_id, role_id) SELECT $1, role_id FROM auth.roles WHERE role_name = $2";
    // (user, unexpired roles, every role granted, expired ones included)
    let mut users: Vec<(i64, Vec<String>, Vec<String>)> = Vec::new();
    for user in 1..=300_i64 {
        let mut held: Vec<String> = Vec::new();
        let mut taken: Vec<usize> = Vec::new();
        for k in 0..rng.below(4) + rng.below(3) {
            let r = rng.below(roles.len());
            if taken.contains(&r) {
                continue;
            }
            taken.push(r);
            let expired = k % 2 == 1 && rng.chance(60);
            match (expired, rng.chance(50)) {
                (true, _) => db.execute(grant, &[&user, &roles[r], &-1_i32]).map(|_| ()),
                (false, true) => db.execute(grant, &[&user, &roles[r], &1_i32]).map(|_| ()),
                (false, false) => db.execute(grant_forever, &[&user, &roles[r]]).map(|_| ()),
            }
            .unwrap();
            if !expired {
                held.push(roles[r].clone());
            }
        }
        users.push((user, held, taken.iter().map(|r| roles[*r].clone()).collect()));
    }

    let dir = tempfile::tempdir().unwrap();
    let (out, text) = import(&pg.url(), &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: PolicyDocument = serde_yaml_ng::from_str(&text).unwrap();
    let policy = Policy::compile(&doc).unwrap();
    assert!(stderr(&out).contains("roles.gen_14: grants nothing"), "a role without rows is kept, with a warning");
    assert!(doc.roles.contains_key("gen_14"));

    // NoETL's seed table, as the issue states it.
    let p = |s: &str| PlaybookPath::parse(s).unwrap();
    for (roles, action, path, allowed) in [
        (&["developer"][..], "execute", "system/reset", false),
        (&["developer"], "modify", "data/x", true),
        (&["developer", "viewer"], "view", "system/reset", true),
        (&["analyst"], "execute", "data/daily_load", true),
        (&["analyst"], "modify", "data/daily_load", false),
        (&["analyst"], "view", "database", false),
        (&["viewer"], "execute", "data/x", false),
        (&["admin"], "delete", "data/x", false),
    ] {
        assert_eq!(policy.decide(roles, action, &p(path)).allowed, allowed, "{roles:?} {action} {path}");
    }

    let check = db.prepare(CHECK).unwrap();
    let (mut cases, mut allowed, mut wrong) = (0, 0, Vec::new());
    for (user, held, granted) in &users {
        // Half the paths near a pattern of a role the user was granted, half from anywhere.
        let near: Vec<&String> = aimed.iter().filter(|(r, _)| granted.contains(r)).map(|(_, p)| p).collect();
        for k in 0..12 {
            let path = match near.len() {
                n if n > 0 && k % 2 == 0 => near[rng.below(n)],
                _ => &paths[rng.below(paths.len())],
            };
            for action in ACTIONS {
                let noetl: bool = db.query_one(&check, &[user, path, &action]).unwrap().get(0);
                let decision = policy.decide(held, action, &p(path));
                cases += 1;
                allowed += usize::from(noetl);
                if decision.allowed != noetl {
                    wrong.push(format!("{held:?} {action} {path:?}: NoETL {noetl}, filter {decision:?}"));
                }
            }
        }
    }
    eprintln!("differential: {cases} cases ({allowed} allowed by NoETL), {} paths, {} roles", paths.len(), roles.len());
    assert!(
        wrong.is_empty(),
        "{} of {cases} differ:\n{}",
        wrong.len(),
        wrong.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(allowed * 10 > cases && allowed * 10 < cases * 9, "the cases are lopsided: {allowed} of {cases} allowed");
}

#[test]
fn missing_tables_and_columns_are_named_and_empty_patterns_warned_about() {
    let pg = Postgres::start();
    let mut db = pg.client();
    db.batch_execute(DDL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |schema: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_playbook-guard"))
            .args(["import-noetl", "--database-url", &pg.url(), "--schema", schema, "--output"])
            .arg(dir.path().join(format!("{schema}.yaml")))
            .output()
            .unwrap();
        (out.status.code(), stderr(&out))
    };
    db.batch_execute("CREATE SCHEMA bare; CREATE TABLE bare.roles (role_id int, role_name text);").unwrap();
    let (code, err) = run("bare");
    assert_eq!(code, Some(2));
    assert!(err.contains("table bare.playbook_permissions is missing"), "{err}");
    db.batch_execute(
        "CREATE SCHEMA old; CREATE TABLE old.roles (role_id int, role_name text);
         CREATE TABLE old.playbook_permissions (permission_id int, role_id int, playbook_path text,
             can_execute bool, can_view bool, can_modify bool, allow_pattern text);",
    )
    .unwrap();
    let (_, err) = run("old");
    assert!(err.contains("column old.playbook_permissions.deny_pattern is missing"), "{err}");

    db.batch_execute(
        "INSERT INTO auth.roles (role_name) VALUES ('odd'), ('idle');
         INSERT INTO auth.playbook_permissions (role_id, playbook_path, can_execute, can_view, can_modify, allow_pattern, deny_pattern)
         SELECT role_id, 'data/x', true, true, false, '', '' FROM auth.roles WHERE role_name = 'odd';",
    )
    .unwrap();
    let (code, err) = run("auth");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("allow_pattern is empty, so it matches no playbook; kept"), "{err}");
    assert!(err.contains("deny_pattern is empty"), "{err}");
    assert!(err.contains("roles.idle: grants nothing"), "{err}");
    let text = std::fs::read_to_string(dir.path().join("auth.yaml")).unwrap();
    assert!(text.contains("# auth.playbook_permissions permission_id 1, playbook_path \"data/x\"\n"), "{text}");
    assert!(text.contains("paths: [\"data/x\"]"), "{text}");
    assert!(text.contains("like: [\"\"]") && text.contains("\"idle\":\n    allow: []"), "{text}");
}

#[test]
fn an_unreachable_database_is_named_with_its_password_masked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = import(&format!("postgres://noetl:hunter2@127.0.0.1:{port}/noetl"), &dir);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot connect to postgres://noetl:****@127.0.0.1:{port}/noetl")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
