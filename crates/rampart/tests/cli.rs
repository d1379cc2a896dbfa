//! The `rampart` binary's messages for bad input: what an operator reads must name the flag or
//! the setting, in its own unit, once, and never echo a file that is not what it was meant to be.
//! Each test runs the real binary on a fresh SQLite data dir, with none of the caller's
//! `RAMPART_*` environment.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// A fresh data dir, migrated, with team `t` and one key in it.
struct Store {
    dir: tempfile::TempDir,
    key_id: String,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            dir,
            key_id: String::new(),
        };
        store.ok(&["migrate"]);
        store.ok(&["teams", "create", "t"]);
        store.ok(&["keys", "create", "--name", "k", "--team", "t"]);
        let list = store.ok(&["keys", "list"]);
        let key_id = list.split_whitespace().next().unwrap().to_owned();
        Store { key_id, ..store }
    }

    /// `rampart ARGS --data-dir DIR`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", self.dir.path().to_str().unwrap()]);
        rampart(&all, &[])
    }

    /// As [`Store::run`], which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// As [`Store::run`], which must fail; its standard error.
    fn refused(&self, args: &[&str]) -> String {
        refused(self.run(args), args)
    }
}

/// The binary with `args`, only `env` in its environment (and `HOME`).
fn rampart(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out` must be a failure; its standard error.
fn refused(out: Output, args: &[&str]) -> String {
    assert!(
        !out.status.success(),
        "{args:?} was accepted: {}",
        text(&out)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn budgets_out_of_range_are_told_in_dollars_naming_the_flag() {
    let s = Store::new();
    let range = "must be between 0.000001 and 1000000000 (US dollars)";
    for usd in [
        "0",
        "0.0000",
        "18446744073709",
        "1000000000.000001",
        "99999999999999999999",
    ] {
        let budget = ["--budget-usd", usd, "--budget-period", "day"];
        let key_budget = ["--key-budget-usd", usd, "--key-budget-period", "day"];
        let cases: [(Vec<&str>, &str); 4] = [
            (
                [&["keys", "create", "--name", "b"][..], &budget].concat(),
                "--budget-usd",
            ),
            (
                [&["keys", "limits", &s.key_id][..], &budget].concat(),
                "--budget-usd",
            ),
            (
                [&["teams", "limits", "t"][..], &budget].concat(),
                "--budget-usd",
            ),
            (
                [&["teams", "limits", "t"][..], &key_budget].concat(),
                "--key-budget-usd",
            ),
        ];
        for (args, flag) in cases {
            let err = s.refused(&args);
            assert!(err.contains(&format!("{flag} {range}")), "{args:?}: {err}");
            assert!(!err.contains("1000000000000000"), "micro-dollars: {err}");
            assert!(!err.contains("limits.budget"), "{err}");
        }
    }
    // A negative amount gets the amount's message, not clap's "unexpected argument '-5'".
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "keys",
                "create",
                "--name",
                "b",
                "--budget-usd",
                "-5",
                "--budget-period",
                "day",
            ],
            "--budget-usd",
        ),
        (
            &[
                "teams",
                "limits",
                "t",
                "--key-budget-usd",
                "-5",
                "--key-budget-period",
                "day",
            ],
            "--key-budget-usd",
        ),
    ];
    for (args, flag) in cases {
        let err = s.refused(args);
        let says = format!("{flag} must be an amount like 12.50");
        assert!(err.contains(&says), "{args:?}: {err}");
    }
    // Other limits name their flag too.
    let err = s.refused(&["teams", "limits", "t", "--key-rpm", "0"]);
    assert!(err.contains("--key-rpm must be between 1 and"), "{err}");
    // The bounds themselves are accepted.
    for usd in ["0.000001", "1000000000"] {
        s.ok(&[
            "keys",
            "limits",
            &s.key_id,
            "--budget-usd",
            usd,
            "--budget-period",
            "month",
        ]);
    }
}

#[test]
fn keys_create_takes_its_team_by_name_or_id_and_makes_one_only_when_asked() {
    let s = Store::new();
    let teams = s.ok(&["teams", "list"]);
    let id = teams.split_whitespace().next().unwrap().to_owned();
    // By id, as `teams list` shows it: the key joins that team.
    let out = s.ok(&["keys", "create", "--name", "by-id", "--team", &id]);
    assert!(out.contains(" for team t\n"), "{out}");
    // A name or an id that no team has is refused, naming the flag, with nothing written; an id
    // is not a new team's name even with --create-team.
    let unknown = uuid::Uuid::now_v7().to_string();
    for (args, says) in [
        (
            vec!["--team", "tt"],
            "--team: no team named `tt`; create it",
        ),
        (vec!["--team", &unknown], "--team: no team with id"),
        (
            vec!["--team", &unknown, "--create-team"],
            "--team: no team with id",
        ),
    ] {
        let all = [&["keys", "create", "--name", "x"][..], &args].concat();
        let out = s.run(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {}", text(&out));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(says), "{all:?}: {err}");
    }
    assert_eq!(s.ok(&["teams", "list"]), teams);
    assert_eq!(s.ok(&["keys", "list"]).lines().count(), 2);
    // --create-team makes a missing team, once.
    let out = s.ok(&[
        "keys",
        "create",
        "--name",
        "x",
        "--team",
        "tt",
        "--create-team",
    ]);
    assert!(out.contains(" for new team tt\n"), "{out}");
    let out = s.ok(&[
        "keys",
        "create",
        "--name",
        "y",
        "--team",
        "tt",
        "--create-team",
    ]);
    assert!(out.contains(" for team tt\n"), "{out}");
    assert_eq!(s.ok(&["teams", "list"]).lines().count(), 2);
}

#[test]
fn keys_create_refuses_a_bad_expiry_before_writing_anything() {
    let s = Store::new();
    let teams = s.ok(&["teams", "list"]);
    let mut max = String::new();
    for days in ["0", "3000000", "4294967295"] {
        let args = [
            "keys",
            "create",
            "--name",
            "p",
            "--team",
            "new",
            "--create-team",
            "--rpm",
            "5",
            "--expires-in-days",
            days,
        ];
        let out = s.run(&args);
        assert_eq!(out.status.code(), Some(1), "{days}: {}", text(&out));
        let err = String::from_utf8(out.stderr).unwrap();
        let (_, bound) = err
            .trim_end()
            .split_once("--expires-in-days must be between 1 and ")
            .unwrap_or_else(|| panic!("{days}: {err}"));
        assert!(!err.contains("panicked"), "{err}");
        max = bound.to_owned();
    }
    // Neither the team nor a key was written.
    assert_eq!(s.ok(&["teams", "list"]), teams);
    assert_eq!(s.ok(&["keys", "list"]).lines().count(), 1);
    // The largest accepted value is the one the message gives (the year 9999).
    s.ok(&["keys", "create", "--name", "p", "--expires-in-days", &max]);
}

#[test]
fn keys_create_refuses_the_names_and_patterns_the_admin_api_refuses() {
    let s = Store::new();
    let (name_100, name_101) = ("n".repeat(100), "n".repeat(101));
    let (model_200, model_201) = ("m".repeat(200), "m".repeat(201));
    for (args, says) in [
        (
            vec!["--name", "k", "--model", &model_201],
            "--model must be 1-200 characters of letters, digits",
        ),
        (
            vec!["--name", "k", "--model", "claude-*", "--model", "x\u{1}y"],
            "--model #2 must be 1-200 characters",
        ),
        (
            vec!["--name", "n\u{7}x"],
            "--name must not contain control characters",
        ),
        (
            vec!["--name", &name_101],
            "--name is longer than 100 characters",
        ),
        (
            vec!["--name", "k", "--endpoint", "admin"],
            "--endpoint must be one of messages, count_tokens",
        ),
    ] {
        let all = [&["keys", "create"][..], &args].concat();
        let err = s.refused(&all);
        assert!(err.contains(says), "{all:?}: {err}");
    }
    assert_eq!(s.ok(&["keys", "list"]).lines().count(), 1);
    // The bounds themselves are accepted.
    s.ok(&["keys", "create", "--name", &name_100, "--model", &model_200]);
}

#[test]
fn bad_usage_times_say_why_once_with_the_formats_accepted() {
    let s = Store::new();
    for (from, why) in [
        ("garbage", "the 'year' component could not be parsed"),
        ("2026-02-30", "day was not in range"),
    ] {
        let err = s.refused(&["usage", "--from", from]);
        assert_eq!(err.matches(why).count(), 1, "{err}");
        assert!(err.contains("--from"), "{err}");
        assert!(
            err.contains("RFC 3339") && err.contains("YYYY-MM-DD") || err.contains("UTC day"),
            "{err}"
        );
    }
}

#[test]
fn usage_refuses_what_the_admin_api_refuses() {
    let s = Store::new();
    let unknown = uuid::Uuid::now_v7().to_string();
    for (args, says) in [
        (
            vec!["--from", "0000-01-01"],
            "--from and --to may be at most 400 days apart",
        ),
        (vec!["--model", ""], "--model must be 1 to 200 characters"),
        (vec!["--key", &unknown], "no key"),
        (vec!["--team", "nobody"], "no team"),
        (
            vec!["--group-by", "key,,team"],
            "--group-by: an empty dimension",
        ),
        (
            vec!["--group-by", "key,key"],
            "--group-by: `key` is given twice",
        ),
        (
            vec!["--from", "2026-06-02", "--to", "2026-06-01"],
            "--from must be before --to",
        ),
    ] {
        let all = [&["usage"][..], &args].concat();
        let err = s.refused(&all);
        assert!(err.contains(says), "{all:?}: {err}");
    }
    // What the API accepts, the command accepts: a known key, a range of 400 days.
    s.ok(&["usage", "--key", &s.key_id, "--group-by", "key,model"]);
    s.ok(&["usage", "--from", "2025-01-01", "--to", "2026-02-05"]);
}

/// The lines of a file that must never be shown.
const SHADOW: &str =
    "root:$6$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";

fn config_check(dir: &Path, config: &str) -> String {
    let path = dir.join("rampart.toml");
    std::fs::write(&path, config).unwrap();
    let args = ["config", "check", "--config", path.to_str().unwrap()];
    let env = [
        ("RAMPART_UPSTREAM_API_KEY", "sk-test-upstream"),
        ("RAMPART_API_KEYS", "rk_test_0123456789abcdef"),
    ];
    refused(rampart(&args, &env), &args)
}

#[test]
fn config_check_never_shows_the_text_of_a_file_it_cannot_parse() {
    let dir = tempfile::tempdir().unwrap();
    let shadow = dir.path().join("shadow");
    std::fs::write(&shadow, SHADOW).unwrap();
    let pricing = config_check(
        dir.path(),
        &format!("[pricing]\nfile = {:?}\n", shadow.to_str().unwrap()),
    );
    // As the configuration file itself.
    let args = ["config", "check", "--config", shadow.to_str().unwrap()];
    let itself = refused(rampart(&args, &[]), &args);
    for err in [pricing, itself] {
        assert!(
            err.contains(shadow.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(err.contains("line 1, column "), "says where: {err}");
        for secret in ["root", "$6$", "c2FsdHNhbHQ", "19000", "daemon"] {
            assert!(!err.contains(secret), "shows `{secret}`: {err}");
        }
    }
}

#[test]
fn config_check_reports_every_problem_of_a_section_despite_a_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_check(
        dir.path(),
        r#"
[pricing]
batch_discount_percent = 120

[pricing.models."a"]
input = -1
output = 1
cache_reed = 0.1

[pricing.models.""]
input = 1
output = 1

[ledger]
fsync = "sometimes"
retention_days = -5
batch_max = 0
"#,
    );
    for problem in [
        "cache_reed",
        "batch_discount_percent",
        "models.\"a\".input",
        "a model id is empty",
        "ledger.fsync",
        "ledger.retention_days",
        "ledger.batch_max",
    ] {
        assert!(err.contains(problem), "`{problem}` missing from:\n{err}");
    }
    assert!(err.contains("7 problem(s)"), "{err}");
}

#[test]
fn serve_without_an_upstream_key_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let keygen = rampart(&["keygen"], &[]);
    let secret = String::from_utf8(keygen.stdout).unwrap();
    let secret = secret.trim();
    let args = ["serve", "--data-dir", data, "--listen", "127.0.0.1:0"];
    let env = [
        ("RAMPART_JWT_SECRET", secret),
        ("RAMPART_MASTER_KEY", secret),
    ];
    let err = refused(rampart(&args, &env), &args);
    let why = "no upstream credential is stored";
    assert!(err.contains("no upstream API key"), "{err}");
    assert_eq!(err.matches(why).count(), 1, "{err}");
}
