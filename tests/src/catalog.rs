//! The extension's catalog as comparable text, and the releases the upgrade
//! test starts from.
//!
//! `describe` lists, one line per fact, everything a user of the extension can
//! tell apart: functions (arguments, result, language, body, volatility,
//! strictness, SECURITY DEFINER, settings, ACL, comment), tables and views
//! (columns in order with types, defaults, NOT NULL, identity; options,
//! partitioning, ACL, comments), constraints, indexes, triggers, sequences,
//! types and domains, the schema's ACL and the tables registered with
//! `pg_extension_config_dump`. An upgraded database and a fresh install of the
//! same version must describe alike.

use postgres::Client;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commit that was released as 0.1.0 (tag `v0.1.0`; CI's fresh clone has
/// the whole history but maybe no tags, so the test names the commit).
pub const V0_1_0: &str = "46b1661";

const DESCRIBE: &str = r#"
WITH ext AS (SELECT e.oid, e.extconfig, e.extcondition FROM pg_catalog.pg_extension e
              WHERE e.extname = 'twitch_sync'),
     ns AS (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = 'twitch_sync'),
     rels AS (SELECT c.* FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM ns))
SELECT line FROM (
    SELECT pg_catalog.format('schema acl=%s owner_is_extension_member=%s',
               n.nspacl,
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_namespace'::regclass
                          AND d.objid = n.oid AND d.refobjid = (SELECT oid FROM ext) AND d.deptype = 'e')) AS line
      FROM pg_catalog.pg_namespace n WHERE n.oid = (SELECT oid FROM ns)
    UNION ALL
    SELECT pg_catalog.format('function %s(%s) returns %s | lang=%s kind=%s volatile=%s strict=%s secdef=%s parallel=%s leakproof=%s cost=%s rows=%s | config=%s | acl=%s | comment=%s | body_md5=%s | bin=%s',
               p.proname, pg_catalog.pg_get_function_arguments(p.oid),
               pg_catalog.pg_get_function_result(p.oid), l.lanname, p.prokind, p.provolatile,
               p.proisstrict, p.prosecdef, p.proparallel, p.proleakproof, p.procost, p.prorows,
               p.proconfig, p.proacl, pg_catalog.obj_description(p.oid, 'pg_proc'),
               pg_catalog.md5(p.prosrc), p.probin)
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
     WHERE p.pronamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT pg_catalog.format('relation %s kind=%s persistence=%s options=%s partkey=%s partition_of=%s acl=%s comment=%s',
               c.relname, c.relkind, c.relpersistence, c.reloptions,
               CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
               (SELECT i.inhparent::regclass FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid),
               c.relacl, pg_catalog.obj_description(c.oid, 'pg_class'))
      FROM rels c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
    UNION ALL
    SELECT pg_catalog.format('view %s: %s', c.relname, pg_catalog.md5(pg_catalog.pg_get_viewdef(c.oid)))
      FROM rels c WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT pg_catalog.format('column %s.%s #%s %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
               c.relname, a.attname,
               (SELECT count(*) FROM pg_catalog.pg_attribute b WHERE b.attrelid = a.attrelid
                   AND b.attnum > 0 AND b.attnum <= a.attnum AND NOT b.attisdropped),
               pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
               (SELECT co.collname FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation),
               a.attacl, pg_catalog.col_description(c.oid, a.attnum))
      FROM rels c
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
       AND (c.relkind <> 'c' OR EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.typrelid = c.oid AND t.typtype = 'c'))
    UNION ALL
    SELECT pg_catalog.format('constraint %s on %s: %s deferrable=%s', k.conname,
               coalesce(k.conrelid::regclass::text, k.contypid::regtype::text),
               pg_catalog.pg_get_constraintdef(k.oid), k.condeferrable)
      FROM pg_catalog.pg_constraint k WHERE k.connamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT pg_catalog.format('index %s', pg_catalog.pg_get_indexdef(i.indexrelid))
      FROM pg_catalog.pg_index i JOIN rels c ON c.oid = i.indrelid
    UNION ALL
    SELECT pg_catalog.format('trigger %s', pg_catalog.pg_get_triggerdef(t.oid))
      FROM pg_catalog.pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT pg_catalog.format('sequence %s type=%s start=%s inc=%s min=%s max=%s cycle=%s acl=%s',
               c.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
               s.seqcycle, c.relacl)
      FROM rels c JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
    UNION ALL
    SELECT pg_catalog.format('type %s typtype=%s base=%s notnull=%s default=%s acl=%s comment=%s',
               t.typname, t.typtype, pg_catalog.format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               t.typdefault, t.typacl, pg_catalog.obj_description(t.oid, 'pg_type'))
      FROM pg_catalog.pg_type t
     WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typtype IN ('c', 'd', 'e')
       AND (t.typtype <> 'c' OR (SELECT r.relkind FROM pg_catalog.pg_class r WHERE r.oid = t.typrelid) = 'c')
    UNION ALL
    SELECT pg_catalog.format('enum %s: %s', t.typname,
               (SELECT pg_catalog.string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid))
      FROM pg_catalog.pg_type t WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typtype = 'e'
    UNION ALL
    -- what pg_dump takes as the extension's own grants (it dumps only the rest)
    SELECT pg_catalog.format('initial privileges of %s: %s',
               pg_catalog.pg_describe_object(i.classoid, i.objoid, i.objsubid), i.initprivs)
      FROM pg_catalog.pg_init_privs i
      JOIN pg_catalog.pg_depend d ON d.classid = i.classoid AND d.objid = i.objoid
                                 AND d.deptype = 'e' AND d.refobjid = (SELECT oid FROM ext)
     WHERE i.privtype = 'e'
    UNION ALL
    SELECT pg_catalog.format('config_dump %s condition=%s', cfg.rel::regclass, cfg.cond)
      FROM ext, unnest(ext.extconfig, ext.extcondition) AS cfg(rel, cond)
    UNION ALL
    SELECT pg_catalog.format('member outside the schema: %s',
               pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid))
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid
       AND d.deptype = 'e'
       AND pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) NOT LIKE '%twitch_sync.%'
       AND d.classid <> 'pg_catalog.pg_namespace'::regclass
) facts
ORDER BY line
"#;

/// The extension's catalog in the database `client` is connected to, one
/// line per fact, sorted.
pub fn describe(client: &mut Client) -> Vec<String> {
    client
        .query(DESCRIBE, &[])
        .expect("describe the catalog")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// A readable diff of two sorted catalog descriptions: lines only in `a`
/// (prefixed `-`) and only in `b` (prefixed `+`); empty when they are equal.
pub fn diff(a: &[String], b: &[String]) -> String {
    use std::collections::BTreeSet;
    let (sa, sb): (BTreeSet<&String>, BTreeSet<&String>) = (a.iter().collect(), b.iter().collect());
    let mut out = String::new();
    for l in sa.difference(&sb) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in sb.difference(&sa) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

/// The repository's root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The extension's version in this tree: `[package] version` of the root Cargo.toml.
pub fn current_version() -> String {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let package = manifest
        .split("[package]")
        .nth(1)
        .expect("a [package] section");
    package
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version line in [package]")
        .to_string()
}

fn pg_config() -> String {
    std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into())
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the extension as it was at `commit` (a git worktree under
/// `target/upgrade-from/`, with its own target directory that later runs
/// reuse) and installs it into the system PostgreSQL: its `.so`, control file
/// and install script replace the current ones.
pub fn install_release(commit: &str) {
    let root = repo_root();
    let base = root.join("target/upgrade-from");
    let src = base.join(commit);
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&base).expect("create target/upgrade-from");
        let _ = std::fs::remove_dir_all(&src);
        let mut prune = Command::new("git");
        prune.current_dir(&root).args(["worktree", "prune"]);
        run(prune, "git worktree prune");
        let mut add = Command::new("git");
        add.current_dir(&root)
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&src)
            .arg(commit);
        run(add, &format!("git worktree add {commit}"));
    }
    let mut install = Command::new("cargo");
    install
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .args(["pgrx", "install", "--pg-config", &pg_config()]);
    run(install, &format!("cargo pgrx install of {commit}"));
}

/// Installs the extension as it is in this work tree (what `scripts/test`
/// built), replacing whatever is installed.
pub fn install_current() {
    let mut install = Command::new("cargo");
    install
        .current_dir(repo_root())
        .args(["pgrx", "install", "--pg-config", &pg_config()]);
    run(install, "cargo pgrx install of the current tree");
}
