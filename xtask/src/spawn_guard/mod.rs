//! The spawn guard (a unit test, no root): every external program that the
//! `tests` crate (`tests/src`, `tests/tests`, `tests/examples`), monitor's
//! own integration tests (`monitor/tests`), the benchmarks and xtask itself
//! spawn must be installed by `cargo xtask setup` (the [`INSTALLED`] table:
//! program → Debian package, checked against setup's package lists) or be
//! part of the base system of a fresh machine of this kind ([`BASE`], with a
//! reason). What the scanner understands is described in [`scan`].
//!
//! A program found on a fresh machine only because earlier work installed
//! it (like `bpftool` before issue 13) fails this test with its file:line.

pub mod scan;

use std::collections::BTreeSet;
use std::path::Path;

use scan::{basename, File, Prog, Spawn};

/// Where a program comes from when `cargo xtask setup` installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Debian package (in one of setup's package lists).
    Apt(&'static str),
    /// `cargo install` by setup (bpf-linker, cargo-fuzz, cargo-deb).
    CargoInstall,
}

/// Programs setup installs, with where they come from.
pub const INSTALLED: &[(&str, Source)] = &[
    ("bpftool", Source::Apt("bpftool")),
    ("ip", Source::Apt("iproute2")),
    ("ss", Source::Apt("iproute2")),
    ("tc", Source::Apt("iproute2")),
    ("nstat", Source::Apt("iproute2")),
    ("openssl", Source::Apt("openssl")),
    ("nginx", Source::Apt("nginx")),
    ("tshark", Source::Apt("tshark")),
    ("tcpdump", Source::Apt("tcpdump")),
    ("python3", Source::Apt("python3")),
    ("prometheus", Source::Apt("prometheus")),
    ("promtool", Source::Apt("prometheus")),
    ("h2load", Source::Apt("nghttp2-client")),
    ("nft", Source::Apt("nftables")),
    ("tmux", Source::Apt("tmux")),
    ("sysctl", Source::Apt("procps")),
    ("kill", Source::Apt("procps")),
    ("systemd-analyze", Source::Apt("systemd")),
    ("systemctl", Source::Apt("systemd")),
    ("wrk", Source::Apt("wrk")),
    ("sslsniff-bpfcc", Source::Apt("bpfcc-tools")),
    ("llvm-config", Source::Apt("llvm-22-dev")),
    ("debootstrap", Source::Apt("debootstrap")),
    ("systemd-nspawn", Source::Apt("systemd-container")),
    ("bpf-linker", Source::CargoInstall),
    ("cargo-fuzz", Source::CargoInstall),
    ("cargo-deb", Source::CargoInstall),
];

/// Programs every fresh machine of this kind has, with the reason: Debian's
/// Essential/required packages (what `debootstrap --variant=minbase`
/// installs, as `cargo xtask fresh-check` does) and the kind's own tools
/// (rustup's toolchains, git, gcc).
pub const BASE: &[(&str, &str)] = &[
    ("sh", "dash: Essential"),
    ("bash", "bash: Essential"),
    ("env", "coreutils: Essential"),
    ("timeout", "coreutils: Essential"),
    ("false", "coreutils: Essential"),
    ("seq", "coreutils: Essential"),
    ("sleep", "coreutils: Essential"),
    ("date", "coreutils: Essential"),
    ("cp", "coreutils: Essential"),
    ("head", "coreutils: Essential"),
    ("tr", "coreutils: Essential"),
    ("unshare", "util-linux: Essential"),
    ("chroot", "coreutils: Essential"),
    ("mount", "mount: required"),
    ("umount", "mount: required"),
    ("nsenter", "util-linux: Essential"),
    ("setpriv", "util-linux: Essential"),
    ("mountpoint", "util-linux: Essential"),
    ("groupadd", "passwd: required"),
    ("groupdel", "passwd: required"),
    ("getent", "libc-bin: Essential"),
    ("dpkg", "dpkg: Essential"),
    ("dpkg-query", "dpkg: Essential"),
    ("apt-get", "apt: required"),
    ("debconf-set-selections", "debconf: required"),
    (
        "update-ca-certificates",
        "ca-certificates: on the machine kind (run in the fresh root)",
    ),
    ("git", "the machine kind's git (and Debian's)"),
    ("gcc", "the machine kind's gcc (build-essential)"),
    ("cargo", "rustup's proxy: the machine kind's toolchain"),
    ("rustup", "the machine kind's toolchain manager"),
    (
        "sudo",
        "only when not root and sudo exists (`cargo xtask run`)",
    ),
];

/// What a spawn whose program is an expression runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// An external program by name (checked like a literal).
    Program(&'static str),
    /// The project's own binaries or programs a test builds (with why).
    Own(&'static str),
    /// Nothing external: a shell builtin or keyword (with why).
    Builtin(&'static str),
}

/// Program expressions the scanner cannot resolve, resolved by hand: (file,
/// expression as the scanner prints it, what it runs). Every entry must
/// match a spawn, so the table cannot go stale.
pub const RESOLVED: &[(&str, &str, Runs)] = &[
    ("*", "python()", Runs::Program("python3")),
    ("*", "tests::pyssl::python()", Runs::Program("python3")),
    ("*", "crate::pyssl::python()", Runs::Program("python3")),
    (
        "*",
        "hsmon_bin()",
        Runs::Own("hsmon: HSMON_BIN or the release build"),
    ),
    (
        "*",
        "tests::hsmon::hsmon_bin()",
        Runs::Own("hsmon: HSMON_BIN or the release build"),
    ),
    (
        "tests/src/hsmon.rs",
        "self.bin",
        Runs::Own("hsmon: the agent binary under test"),
    ),
    (
        "tests/tests/policy.rs",
        "shell command word {on_fail}",
        Runs::Builtin("`true` or `break`"),
    ),
    (
        "tests/tests/socket_perm.rs",
        "bin",
        Runs::Own("hsmon: the CLI under test"),
    ),
    (
        "tests/tests/uprobes.rs",
        "exe",
        Runs::Own("a C program the test compiles with gcc"),
    ),
    (
        "monitor/tests/alert_rules.rs",
        "promtool",
        Runs::Program("promtool"),
    ),
    (
        "monitor/tests/systemd_unit.rs",
        "analyze",
        Runs::Program("systemd-analyze"),
    ),
    (
        "xtask/src/bench/mod.rs",
        "examples.join(b.name)",
        Runs::Own("the benchmark examples of tests/examples"),
    ),
    (
        "xtask/src/deb.rs",
        "hsmon",
        Runs::Own("hsmon: the release build"),
    ),
    (
        "xtask/src/run.rs",
        "hsmon",
        Runs::Own("hsmon: the release build"),
    ),
    ("xtask/src/run.rs", "sudo", Runs::Program("sudo")),
    (
        "xtask/src/fresh_check.rs",
        "hsmon",
        Runs::Own("hsmon: the release build inside the fresh root"),
    ),
    (
        "xtask/src/test_suite.rs",
        "xtask",
        Runs::Own("xtask itself (`cargo xtask systemd-check`)"),
    ),
    (
        "xtask/src/systemd_check.rs",
        "shell command word $@",
        Runs::Program("systemd-nspawn"),
    ),
    (
        "xtask/src/quickstart.rs",
        "hsmon",
        Runs::Own("hsmon: the release build"),
    ),
    (
        "xtask/src/quickstart.rs",
        "self.hsmon",
        Runs::Own("hsmon: the release build"),
    ),
];

/// The package lists setup installs from, per scope of the spawning file.
struct Lists<'a> {
    /// `setup --test-deps` ([`crate::setup::TEST_PACKAGES`]) and the build
    /// prerequisite ([`crate::setup::LLVM_PACKAGE`]).
    test: &'a [&'a str],
    /// `cargo xtask bench` ([`crate::bench::BENCH_PACKAGES`]).
    bench: &'a [&'a str],
}

/// The directories scanned, relative to the workspace root.
pub const SCANNED: &[&str] = &[
    "tests/src",
    "tests/tests",
    "tests/examples",
    "monitor/tests",
    "xtask/src",
];

/// This module's own directory: its tests and docs name programs on purpose.
const SELF_DIR: &str = "xtask/src/spawn_guard";

/// Reads every `.rs` file under [`SCANNED`] below `root`.
pub fn load_files(root: &Path) -> Vec<File> {
    let mut paths = Vec::new();
    for dir in SCANNED {
        collect_rs(&root.join(dir), &mut paths);
    }
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root).ok()?.to_string_lossy().into_owned();
            if rel.starts_with(SELF_DIR) {
                return None;
            }
            let src = std::fs::read_to_string(&p).ok()?;
            Some(File::new(&rel, &src))
        })
        .collect()
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The programs `cargo xtask quickstart-check` types into tmux: the
/// README's quick-start lines, parsed as shell (continuations joined).
pub fn readme_spawns(readme: &str) -> Result<Vec<Spawn>, String> {
    let terminals = crate::quickstart::readme_terminals(readme).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    for (n, lines) in terminals.iter().enumerate() {
        let script = lines.join("\n").replace("\\\n", " ");
        for prog in scan::script_programs(&script) {
            out.push(Spawn {
                at: format!("README.md (quick start, terminal {})", n + 1),
                file: "README.md".into(),
                prog,
                via: "quickstart-check's tmux send-keys".into(),
            });
        }
    }
    Ok(out)
}

/// Checks every spawn; returns one line per problem (empty when clean).
fn check(spawns: &[Spawn], lists: &Lists<'_>, report_stale: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for s in spawns {
        let name = match &s.prog {
            Prog::Named(n) => n.clone(),
            Prog::Expr(e) => {
                let hit = RESOLVED
                    .iter()
                    .enumerate()
                    .find(|(_, (file, expr, _))| (*file == "*" || *file == s.file) && expr == e);
                match hit {
                    Some((k, (_, _, Runs::Program(p)))) => {
                        used.insert(k);
                        p.to_string()
                    }
                    Some((k, _)) => {
                        used.insert(k);
                        continue;
                    }
                    None => {
                        problems.push(format!(
                            "{}: cannot tell which program `{e}` is (via {}): resolve it in the \
                             scanner or list it in spawn_guard::RESOLVED",
                            s.at, s.via
                        ));
                        continue;
                    }
                }
            }
            Prog::Param { .. } => continue,
        };
        if let Some(p) = problem(s, &name, lists) {
            problems.push(p);
        }
    }
    for (k, (file, expr, _)) in RESOLVED.iter().enumerate() {
        if report_stale && !used.contains(&k) {
            problems.push(format!(
                "spawn_guard::RESOLVED entry ({file}, {expr}) matches no spawn: remove it"
            ));
        }
    }
    problems
}

/// Why `name` spawned at `s` is not provided, if it is not.
fn problem(s: &Spawn, name: &str, lists: &Lists<'_>) -> Option<String> {
    // Deliberately missing programs (tests of "not installed" handling).
    if name.starts_with("/nonexistent/") {
        return None;
    }
    let base = basename(name);
    if base == "hsmon" {
        return None; // the project's own binary (/usr/bin/hsmon from the deb test)
    }
    if BASE.iter().any(|(p, _)| *p == base) {
        return None;
    }
    let Some((_, source)) = INSTALLED.iter().find(|(p, _)| *p == base) else {
        return Some(format!(
            "{}: `{name}` (via {}) is neither installed by `cargo xtask setup` (spawn_guard::INSTALLED \
             and setup's package list) nor base system (spawn_guard::BASE)",
            s.at, s.via
        ));
    };
    let Source::Apt(pkg) = source else {
        return None;
    };
    let bench = s.file.starts_with("tests/examples/") || s.file.starts_with("xtask/src/bench/");
    let ok = lists.test.contains(pkg) || (bench && lists.bench.contains(pkg));
    (!ok).then(|| {
        format!(
            "{}: `{name}` (via {}) needs Debian package `{pkg}`, which `cargo xtask setup{}` does not \
             install: add it to {}",
            s.at,
            s.via,
            if bench { "" } else { " --test-deps" },
            if bench {
                "setup::TEST_PACKAGES or bench::BENCH_PACKAGES"
            } else {
                "setup::TEST_PACKAGES"
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists_with<'a>(test: &'a [&'a str]) -> Lists<'a> {
        Lists {
            test,
            bench: crate::bench::BENCH_PACKAGES,
        }
    }

    fn current_test_list() -> Vec<&'static str> {
        let mut v = crate::setup::TEST_PACKAGES.to_vec();
        v.push(crate::setup::LLVM_PACKAGE);
        v
    }

    fn workspace_spawns() -> Vec<Spawn> {
        let root = crate::util::workspace_root();
        let files = load_files(&root);
        assert!(files.len() > 50, "scanned only {} files", files.len());
        let mut spawns = scan::scan(&files);
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        spawns.extend(readme_spawns(&readme).expect("the README's quick start"));
        spawns
    }

    /// The guard itself: every program the tests, benchmarks and xtask
    /// spawn is installed by setup or base system.
    #[test]
    fn every_spawned_program_is_installed_by_setup_or_base() {
        let spawns = workspace_spawns();
        let list = current_test_list();
        let problems = check(&spawns, &lists_with(&list), true);
        assert!(
            problems.is_empty(),
            "{} spawned program(s) a fresh machine would lack:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }

    /// The scan sees the spawns it must (a scanner that finds nothing
    /// would pass the guard).
    #[test]
    fn scan_finds_known_spawns() {
        let spawns = workspace_spawns();
        let has = |prog: &str, file: &str| {
            spawns
                .iter()
                .any(|s| s.prog == Prog::Named(prog.into()) && s.file == file)
        };
        assert!(has("bpftool", "tests/src/hsmon.rs"));
        assert!(
            has("openssl", "tests/src/openssl.rs"),
            "server_cmd(\"openssl\") wrapper"
        );
        assert!(has("openssl", "tests/tests/policy.rs"), "bash -c script");
        assert!(
            has("ss", "tests/tests/load.rs"),
            "closure wrapper run(\"ss\", ..)"
        );
        assert!(
            has("nstat", "tests/tests/load.rs"),
            "closure wrapper run(\"nstat\", ..)"
        );
        assert!(
            has("date", "tests/tests/policy.rs"),
            "$(..) inside double quotes"
        );
        assert!(
            has("seq", "tests/tests/uprobes.rs"),
            "sh -c in an args array"
        );
        assert!(
            has("openssl", "tests/tests/uprobes.rs"),
            "env LD_LIBRARY_PATH=.. openssl"
        );
        assert!(has("wrk", "tests/examples/bench_nginx.rs"));
        assert!(
            has("/usr/lib/llvm-22/bin/llvm-config", "xtask/src/setup.rs"),
            "fn parameter + const"
        );
    }

    /// On the setup of the commit before issue 13 (0a3a356), whose
    /// TEST_PACKAGES lacked bpftool, the guard names bpftool and where it is
    /// spawned.
    #[test]
    fn fails_on_the_package_list_before_issue_13() {
        let old = [
            "openssl",
            "nginx",
            "tshark",
            "tcpdump",
            "iproute2",
            "python3",
            "prometheus",
            "nghttp2-client",
            crate::setup::LLVM_PACKAGE,
        ];
        let problems = check(&workspace_spawns(), &lists_with(&old), true);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("tests/src/hsmon.rs:") && p.contains("`bpftool`")),
            "{problems:#?}"
        );
    }

    fn fixture_spawns(src: &str) -> Vec<Spawn> {
        scan::scan(&[File::new("tests/tests/fixture.rs", src)])
    }

    #[test]
    fn unknown_program_is_named_with_file_and_line() {
        let spawns = fixture_spawns("fn f() {\n    let mut c = Command::new(\"frobnicate\");\n}\n");
        let problems = check(&spawns, &lists_with(&current_test_list()), false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("tests/tests/fixture.rs:2: `frobnicate`"),
            "{problems:?}"
        );
    }

    #[test]
    fn unresolved_variable_program_is_reported() {
        let spawns = fixture_spawns(
            "fn f(x: &X) {\n let bin = x.pick();\n let c = Command::new(&bin);\n}\n",
        );
        let problems = check(&spawns, &lists_with(&current_test_list()), false);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("fixture.rs:3: cannot tell which program `bin`")),
            "{problems:?}"
        );
    }

    #[test]
    fn wrappers_launchers_and_scripts() {
        let src = r#"
fn ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}
fn t() {
    let a = ns("x", "nft");
    let b = Command::new("timeout").args(["5", "ip", "netns", "exec", &n, "env"]).arg(format!("A={x}")).arg("tcpdump");
    let mut s = ns("x", "bash");
    let script = format!("for i in $(seq 3); do X=1 timeout 2 socat - TCP:{a} </dev/null 2>&1 || true; done");
    s.arg("-c").arg(script);
}
"#;
        let names: BTreeSet<String> = fixture_spawns(src)
            .into_iter()
            .filter_map(|s| match s.prog {
                Prog::Named(n) => Some(n),
                _ => None,
            })
            .collect();
        let want: BTreeSet<String> = [
            "ip", "nft", "timeout", "env", "tcpdump", "bash", "seq", "socat",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn setup_packages_cover_the_installed_table() {
        // Every Debian package the table names is installed by some list.
        for (prog, src) in INSTALLED {
            if let Source::Apt(pkg) = src {
                let known = crate::setup::TEST_PACKAGES.contains(pkg)
                    || crate::bench::BENCH_PACKAGES.contains(pkg)
                    || *pkg == crate::setup::LLVM_PACKAGE;
                assert!(known, "{prog}: package {pkg} is in no setup list");
            }
        }
    }
}
