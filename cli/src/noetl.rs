//! `import-noetl`: NoETL's permission tables (schema `auth`) as a policy file.
//!
//! NoETL allows `(user, playbook P, action A)` when some row of `playbook_permissions` of one of
//! the user's unexpired roles has `(playbook_path = P OR P LIKE allow_pattern)`, `AND
//! (deny_pattern IS NULL OR P NOT LIKE deny_pattern)`, and `can_<A>` set. Each row becomes one
//! allow rule of its role: `paths: [playbook_path]`, `like: [allow_pattern]`, `unless: {like:
//! [deny_pattern]}`, permissions from the `can_*` columns, so a row's deny binds that row alone,
//! as in NoETL. Whose grants have expired is the session's business (NoETL's validation answer
//! lists the unexpired roles), not the policy's.
//!
//! The file is written by hand rather than through serde so each rule carries a comment naming
//! its source row; its `version` is a hash of the rest of the file, so the same rows always give
//! the same version and any change gives a new one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use playbook_guard_core::jwt::{is_role_name, MAX_ROLE_BYTES};
use playbook_guard_core::like::LikeSet;
use playbook_guard_core::path::PlaybookPath;
use playbook_guard_core::policy::{Policy, PolicyDocument, Rule};
use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};

use crate::lint::lint;
use crate::Failure;

/// NoETL's actions, in its column order (`can_execute`, `can_view`, `can_modify`).
const ACTIONS: [&str; 3] = ["execute", "view", "modify"];

/// The tables and columns the import reads; a missing one is named.
const REQUIRED: [(&str, &[&str]); 2] = [
    ("roles", &["role_id", "role_name"]),
    (
        "playbook_permissions",
        &[
            "permission_id",
            "role_id",
            "playbook_path",
            "can_execute",
            "can_view",
            "can_modify",
            "allow_pattern",
            "deny_pattern",
        ],
    ),
];

/// Where NoETL's tables are.
#[derive(Debug, Clone, Args)]
pub struct Source {
    /// NoETL's database: `postgres://user:password@host:5432/noetl` (or libpq's `key=value`
    /// form). TLS is not used.
    #[arg(long, env = "PLAYBOOK_GUARD_DATABASE_URL")]
    pub database_url: String,
    /// The schema holding `roles` and `playbook_permissions`.
    #[arg(long, default_value = "auth")]
    pub schema: String,
}

/// Options of `import-noetl`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    source: Source,
    /// Where to write the policy (atomically); standard output if absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// One row of `playbook_permissions`, with its role's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `permission_id`.
    pub id: i64,
    /// `roles.role_name` of the row's `role_id`.
    pub role: String,
    /// `playbook_path`.
    pub playbook_path: Option<String>,
    /// `can_execute`, `can_view`, `can_modify` (NULL grants nothing, as in NoETL's `WHERE`).
    pub can: [bool; 3],
    /// `allow_pattern`.
    pub allow_pattern: Option<String>,
    /// `deny_pattern`.
    pub deny_pattern: Option<String>,
}

/// NoETL's permissions as read: every role, and every row of a known role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// Role name -> its rows, in `permission_id` order (roles without rows included).
    pub roles: BTreeMap<String, Vec<Row>>,
    /// Rows whose `role_id` names no role: no session can hold them.
    pub orphans: Vec<i64>,
}

/// A policy imported from NoETL's tables.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The policy file's text.
    pub text: String,
    /// The document, as the filter will read it.
    pub doc: PolicyDocument,
    /// (role, `permission_id`) -> the rule the row became, for a change summary.
    pub rules: BTreeMap<(String, i64), Rule>,
    /// What `check` would warn about, and rows the policy cannot hold.
    pub warnings: Vec<String>,
}

/// Runs `import-noetl`.
pub fn run(args: &ImportArgs) -> Result<(), Failure> {
    let imported = import(&args.source)?;
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    match &args.output {
        None => print!("{}", imported.text),
        Some(path) => {
            crate::publish::replace_atomically(path, imported.text.as_bytes())?;
            eprintln!(
                "imported policy version {:?} ({} roles, {} rules) to {}",
                imported.doc.version,
                imported.doc.roles.len(),
                imported.rules.len(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads the tables and renders the policy.
pub fn import(source: &Source) -> Result<Imported, Failure> {
    let mut client = Client::connect(&source.database_url, NoTls)
        .map_err(|e| Failure(format!("cannot connect to {}: {e}", mask_password(&source.database_url))))?;
    let tables = read(&mut client, &source.schema)?;
    render(&tables, &source.schema)
}

/// Reads `roles` and `playbook_permissions` from `schema`, after checking that every column
/// the import needs is there (so a renamed column is named, not a failed query).
pub fn read(client: &mut Client, schema: &str) -> Result<Tables, Failure> {
    for (table, columns) in REQUIRED {
        let found: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if found.is_empty() {
            return Err(Failure(format!("table {schema}.{table} is missing (or not readable by this user)")));
        }
        if let Some(column) = columns.iter().find(|c| !found.iter().any(|f| f == *c)) {
            return Err(Failure(format!("column {schema}.{table}.{column} is missing")));
        }
    }
    let q = quote_identifier(schema);
    let mut tables = Tables::default();
    for row in client.query(&format!("SELECT role_name::text FROM {q}.roles"), &[])? {
        tables.roles.insert(row.get(0), Vec::new());
    }
    let rows = client.query(
        &format!(
            "SELECT p.permission_id::int8, r.role_name::text, p.playbook_path::text, p.can_execute, p.can_view, \
             p.can_modify, p.allow_pattern::text, p.deny_pattern::text \
             FROM {q}.playbook_permissions p LEFT JOIN {q}.roles r ON r.role_id = p.role_id ORDER BY p.permission_id"
        ),
        &[],
    )?;
    for row in rows {
        let id: i64 = row.get(0);
        let Some(role) = row.get::<_, Option<String>>(1) else {
            tables.orphans.push(id);
            continue;
        };
        let can = |i| row.get::<_, Option<bool>>(i).unwrap_or(false);
        let row = Row {
            id,
            role: role.clone(),
            playbook_path: row.get(2),
            can: [can(3), can(4), can(5)],
            allow_pattern: row.get(6),
            deny_pattern: row.get(7),
        };
        tables.roles.entry(role).or_default().push(row);
    }
    Ok(tables)
}

/// The policy file for `tables`, checked by compiling it as the filter would.
pub fn render(tables: &Tables, schema: &str) -> Result<Imported, Failure> {
    let mut body = String::from("roles:\n");
    let mut warnings = Vec::new();
    let mut rules = BTreeMap::new();
    // What the filter cannot take is left out, with a warning, a role or a row at a time, and
    // leaving a grant out only ever refuses more: one bad row must not stop every later import
    // (`sync-noetl` would keep serving the last policy, grants revoked since included).
    for (role, rows) in &tables.roles {
        if !is_role_name(role) {
            warnings.push(format!(
                "{schema}.roles role_name {}: no session can carry it (empty, or holding a comma, \
                 whitespace or a control character, or over {MAX_ROLE_BYTES} bytes); its {} row(s) left out",
                quote(role),
                rows.len()
            ));
            continue;
        }
        let _ = writeln!(body, "  {}:", quote(role));
        let fates: Vec<Option<LeftOut>> = rows.iter().map(left_out).collect();
        if fates.iter().any(Option::is_none) {
            body.push_str("    allow:\n");
        } else {
            body.push_str("    allow: []\n");
        }
        for (row, fate) in rows.iter().zip(fates) {
            let source = format!("{schema}.playbook_permissions permission_id {}", row.id);
            if let Some(LeftOut { warning, comment }) = fate {
                warnings.push(format!("{source} (role {role}){warning}"));
                let _ = writeln!(body, "    # {source}: {comment}");
                continue;
            }
            for (which, pattern) in [("allow_pattern", &row.allow_pattern), ("deny_pattern", &row.deny_pattern)] {
                if pattern.as_deref() == Some("") {
                    warnings.push(format!("{source} (role {role}): {which} is empty, so it matches no playbook; kept"));
                }
            }
            let rule = rule(row);
            let path = row.playbook_path.as_deref().map_or("NULL".to_owned(), quote);
            let _ = writeln!(body, "      # {source}, playbook_path {path}");
            let _ = writeln!(body, "      - permissions: {}", list(&rule.permissions));
            if !rule.paths.is_empty() {
                let _ = writeln!(body, "        paths: {}", list(&rule.paths));
            }
            if !rule.like.is_empty() {
                let _ = writeln!(body, "        like: {}", list(&rule.like));
            }
            if let Some(unless) = &rule.unless {
                let _ = writeln!(body, "        unless: {{ like: {} }}", list(&unless.like));
            }
            rules.insert((role.clone(), row.id), rule);
        }
    }
    for id in &tables.orphans {
        warnings.push(format!("{schema}.playbook_permissions permission_id {id}: its role_id names no role; left out"));
    }
    body.push_str("deny: []\n");
    let digest = Sha256::digest(body.as_bytes());
    let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "# Imported from NoETL's {schema}.roles and {schema}.playbook_permissions by `playbook-guard import-noetl`;\n\
         # re-import rather than edit. One allow rule per row: paths = playbook_path, like = allow_pattern,\n\
         # unless = deny_pattern (it binds its own row only, as in NoETL's check). A playbook_path no\n\
         # request's playbook path can equal (NoETL's seed rows hold \"%\") is left out.\n\
         version: \"noetl-{version}\"\n{body}"
    );
    let doc: PolicyDocument =
        serde_yaml_ng::from_str(&text).map_err(|e| Failure(format!("the imported policy does not parse: {e}")))?;
    Policy::compile(&doc).map_err(|e| Failure(format!("the imported policy does not compile: {e}")))?;
    warnings.extend(lint(&doc).into_iter().map(|w| format!("{}: {}", w.path, w.message)));
    Ok(Imported { text, doc, rules, warnings })
}

/// Why a row becomes no rule: the rest of its warning, after its source and role, and of its
/// comment in the file.
struct LeftOut {
    warning: String,
    comment: String,
}

/// Whether the row is left out: it grants nothing, or the filter cannot compile one of its
/// patterns (one ending in a lone `\`, which PostgreSQL refuses too once a match reaches it, or
/// one too large to compile). Leaving such a row out is never more than NoETL allows: its check
/// errors on such a pattern (503), or matches fewer paths than no deny at all would. Each
/// pattern is compiled here once per import.
fn left_out(row: &Row) -> Option<LeftOut> {
    if !grants(row) {
        return Some(LeftOut {
            warning: " grants nothing (no can_* set, or no path and no allow_pattern); left out".into(),
            comment: "grants nothing, left out".into(),
        });
    }
    [("allow_pattern", &row.allow_pattern), ("deny_pattern", &row.deny_pattern)].into_iter().find_map(
        |(which, pattern)| {
            let pattern = pattern.as_deref()?;
            let error = LikeSet::new(&[pattern]).err()?;
            Some(LeftOut {
                warning: format!(
                    ": {which} {}: {}; the row is left out (it grants nothing)",
                    quote(pattern),
                    error.message
                ),
                comment: format!("{which} cannot be compiled, left out"),
            })
        },
    )
}

/// Whether a row can grant anything: some action, and some way to match a path.
fn grants(row: &Row) -> bool {
    row.can.iter().any(|c| *c) && (decidable_path(row).is_some() || row.allow_pattern.is_some())
}

/// The row's `playbook_path` if the filter could ever compare a request's playbook with it.
/// NoETL's seed rows hold `%` there, which no request's playbook path equals (the filter
/// refuses a `%` in one), so it is left out of the rule (the comment keeps it) rather than
/// kept as a path `check` would warn can never match.
fn decidable_path(row: &Row) -> Option<&String> {
    row.playbook_path.as_ref().filter(|p| PlaybookPath::parse(p).is_ok_and(|n| n.as_str() == p.as_str()))
}

fn rule(row: &Row) -> Rule {
    let permissions = ACTIONS.iter().zip(row.can).filter(|(_, can)| *can).map(|(a, _)| (*a).to_owned()).collect();
    Rule {
        permissions,
        paths: decidable_path(row).into_iter().cloned().collect(),
        like: row.allow_pattern.iter().cloned().collect(),
        unless: row
            .deny_pattern
            .as_ref()
            .map(|d| playbook_guard_core::policy::Unless { like: vec![d.clone()], ..Default::default() }),
        ..Rule::default()
    }
}

/// A YAML flow list of double-quoted strings. A JSON string is a valid YAML double-quoted
/// scalar, escapes included, so any role name or pattern round-trips.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// `s` as a YAML double-quoted scalar of printable ASCII alone: every other character escaped.
/// The text comes from the database, and YAML reads U+0085, U+2028 and U+2029 as line breaks
/// (where JSON's quoting leaves them be): in a comment one would end it and make the rest of a
/// row's text rules.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// `schema` as a quoted SQL identifier.
fn quote_identifier(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// The connection string with its password replaced by `****`, for messages and logs: in a URL
/// (`postgres://user:secret@host/db`, `?password=secret`) and in libpq's `key=value` form.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return mask_pairs(url, ' ');
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@').map(|(info, host)| (info.split_once(':'), host)) {
        Some((Some((user, _)), host)) => format!("{user}:****@{host}"),
        _ => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", mask_pairs(query, '&')),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn mask_pairs(text: &str, separator: char) -> String {
    let parts: Vec<String> = text
        .split(separator)
        .map(|part| match part.split_once('=') {
            Some((key, _)) if key.trim() == "password" => format!("{key}=****"),
            _ => part.to_owned(),
        })
        .collect();
    parts.join(&separator.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_text_stays_one_scalar_in_a_comment_and_in_a_value() {
        let hostile = "data/report\u{85}      - permissions: [modify]\u{2028}#\u{2029}\"\\\u{7f}\u{1F600}é";
        let quoted = quote(hostile);
        assert!(quoted.chars().all(|c| (' '..='~').contains(&c)), "{quoted}");
        let doc = format!("# row 2, playbook_path {quoted}\nvalue: {quoted}\n");
        let read: BTreeMap<String, String> = serde_yaml_ng::from_str(&doc).unwrap();
        assert_eq!(read.len(), 1, "the comment stayed one line: {doc}");
        assert_eq!(read["value"], hostile, "and the value reads back as written");
    }

    #[test]
    fn passwords_are_masked_in_every_form() {
        assert_eq!(mask_password("postgres://noetl:s3cr@t@db:5432/noetl"), "postgres://noetl:****@db:5432/noetl");
        assert_eq!(mask_password("postgresql://noetl@db/noetl"), "postgresql://noetl@db/noetl");
        assert_eq!(
            mask_password("postgres://db/noetl?user=u&password=hunter2&sslmode=disable"),
            "postgres://db/noetl?user=u&password=****&sslmode=disable"
        );
        assert_eq!(mask_password("host=db user=u password=hunter2 dbname=n"), "host=db user=u password=**** dbname=n");
    }

    fn row(id: i64, role: &str, allow: Option<&str>, deny: Option<&str>, can: [bool; 3]) -> Row {
        Row {
            id,
            role: role.into(),
            playbook_path: Some("%".into()),
            can,
            allow_pattern: allow.map(Into::into),
            deny_pattern: deny.map(Into::into),
        }
    }

    #[test]
    fn rows_become_commented_rules_and_the_version_follows_the_content() {
        let mut tables = Tables::default();
        tables.roles.insert("developer".into(), vec![row(2, "developer", Some("%"), Some("system/%"), [true; 3])]);
        tables.roles.insert("idle".into(), vec![]);
        tables.roles.insert("odd".into(), vec![row(7, "odd", Some(""), None, [false, true, false])]);
        tables.orphans.push(9);
        let imported = render(&tables, "auth").unwrap();
        assert!(
            imported.text.contains("# auth.playbook_permissions permission_id 2, playbook_path \"%\"\n"),
            "{}",
            imported.text
        );
        let developer = &imported.doc.roles["developer"].allow[0];
        assert_eq!(developer.like, ["%"]);
        assert!(developer.paths.is_empty(), "no playbook path is \"%\"");
        assert_eq!(developer.unless.as_ref().unwrap().like, ["system/%"]);
        assert!(imported.doc.roles["idle"].allow.is_empty(), "a role without rows is kept");
        let warned = imported.warnings.join("\n");
        assert!(warned.contains("roles.idle: grants nothing"), "{warned}");
        assert!(warned.contains("permission_id 7 (role odd): allow_pattern is empty"), "{warned}");
        assert!(warned.contains("permission_id 9: its role_id names no role"), "{warned}");
        assert!(imported.doc.version.starts_with("noetl-"));
        assert_eq!(render(&tables, "auth").unwrap().doc.version, imported.doc.version, "same rows, same version");
        tables.roles.insert("idle".into(), vec![row(8, "idle", None, None, [true, false, false])]);
        assert_ne!(render(&tables, "auth").unwrap().doc.version, imported.doc.version);
    }

    #[test]
    fn a_row_or_role_the_filter_cannot_take_is_left_out_and_the_rest_imported() {
        let mut tables = Tables::default();
        tables.roles.insert("analyst".into(), vec![row(1, "analyst", Some("data/%"), None, [true, true, false])]);
        tables.roles.insert(
            "other".into(),
            vec![
                row(2, "other", Some("%"), Some("tmp\\"), [true; 3]),
                row(3, "other", Some("ops\\"), None, [true; 3]),
                row(4, "other", Some("ops/%"), None, [false, true, false]),
            ],
        );
        tables.roles.insert("ops,admin".into(), vec![row(5, "ops,admin", Some("%"), None, [true; 3])]);
        tables.roles.insert(" ".into(), vec![row(6, " ", Some("%"), None, [true; 3])]);
        let imported = render(&tables, "auth").unwrap();
        assert_eq!(imported.doc.roles["analyst"].allow[0].like, ["data/%"], "the good role is imported");
        let other = &imported.doc.roles["other"].allow;
        assert_eq!(other.len(), 1, "only row 4 of other: {}", imported.text);
        assert_eq!(other[0].like, ["ops/%"]);
        assert!(!imported.doc.roles.contains_key("ops,admin") && !imported.doc.roles.contains_key(" "));
        let warned = imported.warnings.join("\n");
        for expected in [
            "permission_id 2 (role other): deny_pattern \"tmp\\\\\"",
            "permission_id 3 (role other): allow_pattern \"ops\\\\\"",
            "role_name \"ops,admin\": no session can carry it",
            "role_name \" \": no session can carry it",
        ] {
            assert!(warned.contains(expected), "{expected} in {warned}");
        }
        let policy = Policy::compile(&imported.doc).unwrap();
        let path = PlaybookPath::parse("tmp/x").unwrap();
        assert!(!policy.decide(&["other"], "execute", &path).allowed, "a row left out grants nothing");
    }
}
