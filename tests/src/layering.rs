//! The crate dependency rules of the workspace (DESIGN.md §2, STYLE.md), checked against what
//! `cargo metadata` says each crate depends on.
//!
//! A crate's role comes from where it lives (`proto/`, `lib/<name>/`, `daemons/<name>/`,
//! `ctl/`, `terraform/`, `tests/`). The rules:
//!
//! - `kl-proto` and `kl-core` depend on no project crate; `kl-store` and `kl-tpm` only on
//!   `kl-core`; and no test of kl-core builds `kl-tpm`, `kl-svc` or `kl-store`.
//! - A daemon uses `kl-core`, `kl-store`, `kl-proto` and `kl-svc`; only the agent uses
//!   `kl-tpm` (server binaries must not link libtss2). `kctl` uses `kl-proto`, `kl-core` and
//!   `kl-svc`.
//! - No daemon depends on another daemon, not even for its tests or benchmarks.
//! - No library crate (`proto/`, `lib/*`) depends on a daemon, `kctl` or the Terraform
//!   provider, not even for its tests.
//! - `anyhow` is for binaries: no library crate has it as a normal dependency.
//! - Test crates are dev-dependencies only; `kl-testkit` depends on kl-core only.
//!
//! A dependency counts with what it brings along: a crate reaches every project crate in the
//! normal dependencies of its dependencies, so a daemon that dev-depends on a test crate which
//! depends on another daemon breaks the rule as much as depending on it directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{Result, err};

/// What a crate is in the layout of DESIGN §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Proto,
    Core,
    Tpm,
    Store,
    Svc,
    /// A library under `lib/` that DESIGN §2 does not name.
    OtherLib,
    Daemon,
    Ctl,
    Terraform,
    Test,
}

impl Role {
    /// The role of the crate whose manifest is at `dir` (relative to the workspace root).
    fn of(dir: &Path) -> Option<Role> {
        let parts: Vec<&str> = dir.iter().filter_map(|p| p.to_str()).collect();
        Some(match parts.as_slice() {
            ["proto"] => Role::Proto,
            ["lib", "core"] => Role::Core,
            ["lib", "tpm"] => Role::Tpm,
            ["lib", "store"] => Role::Store,
            ["lib", "svc"] => Role::Svc,
            ["lib", _] => Role::OtherLib,
            ["daemons", _] => Role::Daemon,
            ["ctl"] => Role::Ctl,
            ["terraform"] => Role::Terraform,
            ["tests"] | ["tests", _] => Role::Test,
            _ => return None,
        })
    }

    fn is_library(self) -> bool {
        matches!(
            self,
            Role::Proto | Role::Core | Role::Tpm | Role::Store | Role::Svc | Role::OtherLib
        )
    }
}

/// How a crate depends on another, as in `[dependencies]`, `[dev-dependencies]` and
/// `[build-dependencies]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Kind::Normal => "[dependencies]",
            Kind::Dev => "[dev-dependencies]",
            Kind::Build => "[build-dependencies]",
        }
    }
}

/// A workspace crate and what its manifest depends on.
#[derive(Debug, Clone)]
pub struct Crate {
    pub name: String,
    /// The manifest's directory, relative to the workspace root.
    pub dir: PathBuf,
    /// Each dependency (package name) with how it is depended on.
    pub dependencies: Vec<(String, Kind)>,
}

/// The workspace's crates from `cargo metadata --format-version 1 --no-deps` output.
pub fn crates_from_metadata(metadata: &Value) -> Result<Vec<Crate>> {
    let root = metadata["workspace_root"]
        .as_str()
        .ok_or_else(|| err("cargo metadata: no workspace_root"))?;
    let packages =
        metadata["packages"].as_array().ok_or_else(|| err("cargo metadata: no packages"))?;
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().ok_or_else(|| err("package without a name"))?;
            let manifest = package["manifest_path"]
                .as_str()
                .ok_or_else(|| err(format!("{name}: no manifest_path")))?;
            let dir = Path::new(manifest)
                .parent()
                .and_then(|d| d.strip_prefix(root).ok())
                .ok_or_else(|| err(format!("{name}: {manifest} is not under {root}")))?
                .to_path_buf();
            let dependencies = package["dependencies"]
                .as_array()
                .ok_or_else(|| err(format!("{name}: no dependencies list")))?
                .iter()
                .map(|d| {
                    let dep = d["name"]
                        .as_str()
                        .ok_or_else(|| err(format!("{name}: nameless dependency")))?;
                    let kind = match d["kind"].as_str() {
                        None => Kind::Normal,
                        Some("dev") => Kind::Dev,
                        Some("build") => Kind::Build,
                        Some(other) => {
                            return Err(err(format!("{name}: {dep}: dependency kind {other:?}")));
                        }
                    };
                    Ok((dep.to_owned(), kind))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Crate { name: name.to_owned(), dir, dependencies })
        })
        .collect()
}

/// The crates of the workspace this crate is built in, from `cargo metadata`.
pub fn workspace_crates() -> Result<Vec<Crate>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(&manifest)
        .output()?;
    if !output.status.success() {
        return Err(err(format!(
            "cargo metadata failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    crates_from_metadata(&serde_json::from_slice(&output.stdout)?)
}

/// Why `from` may not reach `to` by a dependency of `kind`, if it may not.
fn forbidden(from: (&str, Role), kind: Kind, to: (&str, Role)) -> Option<&'static str> {
    let ((from_name, from), (to_name, to)) = (from, to);
    if from == Role::Daemon && to == Role::Daemon && from_name != to_name {
        return Some("no daemon depends on another daemon, not even for tests");
    }
    if from.is_library() && matches!(to, Role::Daemon | Role::Ctl | Role::Terraform) {
        return Some("a library crate never depends on a daemon, kctl or the Terraform provider");
    }
    if from == Role::Core && matches!(to, Role::Proto | Role::Tpm | Role::Svc | Role::Store) {
        return Some("kl-core is pure: its code and its tests use no project crate but kl-testkit");
    }
    if kind == Kind::Dev {
        return None;
    }
    if to == Role::Test && from != Role::Test {
        return Some("test crates are dev-dependencies only");
    }
    match from {
        Role::Proto | Role::Core => Some("kl-proto and kl-core depend on no project crate"),
        Role::Store | Role::Tpm if to != Role::Core => {
            Some("kl-store and kl-tpm use kl-core and no other project crate")
        }
        Role::Daemon if to == Role::Tpm && from_name != "kl-agent" => {
            Some("only the agent uses kl-tpm: server binaries must not link libtss2")
        }
        Role::Daemon
            if !matches!(to, Role::Core | Role::Store | Role::Proto | Role::Svc | Role::Tpm) =>
        {
            Some("a daemon uses kl-core, kl-store, kl-proto and kl-svc")
        }
        Role::Ctl if !matches!(to, Role::Core | Role::Proto | Role::Svc) => {
            Some("kctl uses kl-proto, kl-core and kl-svc")
        }
        Role::Test if from_name == "kl-testkit" && to != Role::Core => {
            Some("kl-testkit depends on kl-core only, so that kl-core's tests build nothing more")
        }
        _ => None,
    }
}

/// Every broken rule, one line each naming the crate, the section of its manifest, the
/// offending dependency (and the direct dependency that brings it along) and the rule.
pub fn violations(crates: &[Crate]) -> Vec<String> {
    let by_name: BTreeMap<&str, &Crate> = crates.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut found = Vec::new();
    let mut roles = BTreeMap::new();
    for c in crates {
        match Role::of(&c.dir) {
            Some(role) => {
                roles.insert(c.name.as_str(), role);
            }
            None => found.push(format!(
                "{}: lives in {}, which is not a place for a crate in DESIGN §2",
                c.name,
                c.dir.display()
            )),
        }
    }
    for c in crates {
        let Some(&role) = roles.get(c.name.as_str()) else { continue };
        for (dep, kind) in &c.dependencies {
            if role.is_library() && *kind != Kind::Dev && dep == "anyhow" {
                found.push(format!(
                    "{}: {} has anyhow: libraries have error types of their own, anyhow is \
                     for binaries (STYLE.md)",
                    c.name,
                    kind.section()
                ));
            }
            if !by_name.contains_key(dep.as_str()) {
                continue;
            }
            for reached in reach(dep, &by_name) {
                let Some(&to) = roles.get(reached) else { continue };
                if let Some(rule) = forbidden((&c.name, role), *kind, (reached, to)) {
                    let through =
                        if reached == dep { String::new() } else { format!(" (through {dep})") };
                    found.push(format!(
                        "{}: {} has {reached}{through}: {rule}",
                        c.name,
                        kind.section()
                    ));
                }
            }
        }
    }
    found
}

/// `name` and every workspace crate in its normal and build dependencies, transitively: what
/// depending on `name` builds.
fn reach<'a>(name: &'a str, by_name: &BTreeMap<&'a str, &'a Crate>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut next = vec![name];
    while let Some(n) = next.pop() {
        if !seen.insert(n) {
            continue;
        }
        if let Some(c) = by_name.get(n) {
            for (dep, kind) in &c.dependencies {
                if *kind != Kind::Dev && by_name.contains_key(dep.as_str()) {
                    next.push(dep.as_str());
                }
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace as it is: every rule holds.
    #[test]
    fn the_workspace_follows_the_dependency_rules() {
        let crates = workspace_crates().expect("cargo metadata");
        let names: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        for expected in ["kl-core", "kl-tpm", "kl-agent", "kl-registrar", "kl-verifier", "kctl"] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        let broken = violations(&crates);
        assert!(broken.is_empty(), "dependency rules broken:\n{}", broken.join("\n"));
    }

    fn krate(name: &str, dir: &str, deps: &[(&str, Kind)]) -> Crate {
        Crate {
            name: name.to_owned(),
            dir: PathBuf::from(dir),
            dependencies: deps.iter().map(|(d, k)| ((*d).to_owned(), *k)).collect(),
        }
    }

    /// A workspace shaped like this one, that follows the rules.
    fn workspace() -> Vec<Crate> {
        use Kind::*;
        vec![
            krate("kl-proto", "proto", &[("tonic", Normal), ("prost-build", Build)]),
            krate("kl-core", "lib/core", &[("ring", Normal), ("kl-testkit", Dev)]),
            krate("kl-tpm", "lib/tpm", &[("kl-core", Normal), ("kl-testkit", Dev)]),
            krate("kl-store", "lib/store", &[("redb", Normal)]),
            krate("kl-svc", "lib/svc", &[("rustls", Normal)]),
            krate(
                "kl-agent",
                "daemons/agent",
                &[("kl-tpm", Normal), ("kl-svc", Normal), ("anyhow", Normal)],
            ),
            krate(
                "kl-registrar",
                "daemons/registrar",
                &[("kl-store", Normal), ("kl-tests", Dev), ("anyhow", Normal)],
            ),
            krate("kl-verifier", "daemons/verifier", &[("kl-core", Normal), ("kl-tests", Dev)]),
            krate("kctl", "ctl", &[("kl-proto", Normal), ("kl-svc", Normal), ("anyhow", Normal)]),
            krate("terraform-provider-keylime", "terraform", &[("kctl", Normal)]),
            krate("kl-testkit", "tests/support", &[("kl-core", Normal)]),
            krate(
                "kl-tests",
                "tests",
                &[("kl-testkit", Normal), ("kl-svc", Normal), ("kl-verifier", Dev)],
            ),
        ]
    }

    /// `workspace()` with `dep` added to `name`'s dependencies.
    fn with(name: &str, dep: &str, kind: Kind) -> Vec<String> {
        let mut crates = workspace();
        let c = crates.iter_mut().find(|c| c.name == name).expect("crate in the sample");
        c.dependencies.push((dep.to_owned(), kind));
        violations(&crates)
    }

    fn assert_one(broken: Vec<String>, expected: &str) {
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(broken[0].contains(expected), "{:?} does not say {expected:?}", broken[0]);
    }

    /// One of the violations says `expected` (a dependency may bring others along).
    fn assert_named(broken: Vec<String>, expected: &str) {
        assert!(broken.iter().any(|b| b.contains(expected)), "{expected:?} not in {broken:?}");
    }

    #[test]
    fn the_sample_workspace_follows_the_rules() {
        assert_eq!(violations(&workspace()), Vec::<String>::new());
    }

    #[test]
    fn a_daemon_depending_on_another_daemon_is_named_whatever_the_kind() {
        for kind in [Kind::Normal, Kind::Dev, Kind::Build] {
            let broken = with("kl-verifier", "kl-registrar", kind);
            assert_one(
                broken,
                &format!("kl-verifier: {} has kl-registrar: no daemon", kind.section()),
            );
        }
    }

    #[test]
    fn a_daemon_reaching_another_daemon_through_a_test_crate_is_named() {
        let broken = with("kl-tests", "kl-agent", Kind::Normal);
        assert!(
            broken.contains(
                &"kl-registrar: [dev-dependencies] has kl-agent (through kl-tests): no daemon \
                  depends on another daemon, not even for tests"
                    .to_owned()
            ),
            "{broken:?}"
        );
    }

    #[test]
    fn a_library_depending_on_a_daemon_kctl_or_terraform_is_named() {
        for (lib, dep) in
            [("kl-svc", "kl-agent"), ("kl-store", "kctl"), ("kl-tpm", "terraform-provider-keylime")]
        {
            let broken = with(lib, dep, Kind::Dev);
            assert_named(broken, &format!("{lib}: [dev-dependencies] has {dep}: a library crate"));
        }
    }

    #[test]
    fn kl_core_using_tpm_svc_or_store_is_named_even_in_tests() {
        for dep in ["kl-tpm", "kl-svc", "kl-store"] {
            let broken = with("kl-core", dep, Kind::Normal);
            assert!(
                broken.iter().any(|b| b.starts_with(&format!("kl-core: [dependencies] has {dep}")))
            );
            let broken = with("kl-core", dep, Kind::Dev);
            assert_one(broken, &format!("kl-core: [dev-dependencies] has {dep}: kl-core is pure"));
        }
        // kl-tests is built on kl-svc, so kl-core's tests cannot use it.
        let broken = with("kl-core", "kl-tests", Kind::Dev);
        assert_one(broken, "kl-core: [dev-dependencies] has kl-svc (through kl-tests)");
    }

    #[test]
    fn libraries_use_only_the_crates_below_them() {
        assert_one(
            with("kl-proto", "kl-core", Kind::Normal),
            "kl-proto: [dependencies] has kl-core",
        );
        assert_one(with("kl-store", "kl-svc", Kind::Normal), "kl-store: [dependencies] has kl-svc");
        assert_one(
            with("kl-tpm", "kl-proto", Kind::Build),
            "kl-tpm: [build-dependencies] has kl-proto",
        );
    }

    #[test]
    fn only_the_agent_uses_kl_tpm() {
        assert_one(
            with("kl-registrar", "kl-tpm", Kind::Normal),
            "kl-registrar: [dependencies] has kl-tpm: only the agent",
        );
        assert_one(with("kctl", "kl-tpm", Kind::Normal), "kctl: [dependencies] has kl-tpm");
        // Through kl-svc, kctl and every server binary would link libtss2.
        let broken = with("kl-svc", "kl-tpm", Kind::Normal);
        assert!(
            broken.contains(
                &"kctl: [dependencies] has kl-tpm (through kl-svc): kctl uses kl-proto, kl-core \
                  and kl-svc"
                    .to_owned()
            ),
            "{broken:?}"
        );
    }

    #[test]
    fn anyhow_in_a_library_is_named() {
        assert_one(with("kl-store", "anyhow", Kind::Normal), "kl-store: [dependencies] has anyhow");
        assert_eq!(with("kl-store", "anyhow", Kind::Dev), Vec::<String>::new());
    }

    #[test]
    fn test_crates_are_dev_dependencies_only() {
        assert_named(
            with("kl-verifier", "kl-tests", Kind::Normal),
            "kl-verifier: [dependencies] has kl-tests: test crates",
        );
        assert_named(
            with("kl-testkit", "kl-agent", Kind::Normal),
            "kl-testkit: [dependencies] has kl-agent: kl-testkit",
        );
        assert_named(
            with("kl-testkit", "kl-proto", Kind::Normal),
            "kl-testkit: [dependencies] has kl-proto: kl-testkit depends on kl-core only",
        );
        assert_named(
            with("kl-core", "kl-proto", Kind::Dev),
            "kl-core: [dev-dependencies] has kl-proto: kl-core is pure",
        );
    }

    #[test]
    fn a_crate_outside_the_layout_is_named() {
        let mut crates = workspace();
        crates.push(krate("kl-utils", "utils", &[]));
        assert_one(violations(&crates), "kl-utils: lives in utils");
    }

    #[test]
    fn metadata_is_read_with_kinds_and_relative_dirs() {
        let metadata = serde_json::json!({
            "workspace_root": "/w",
            "packages": [{
                "name": "kl-core",
                "manifest_path": "/w/lib/core/Cargo.toml",
                "dependencies": [
                    {"name": "ring", "kind": null},
                    {"name": "kl-testkit", "kind": "dev"},
                    {"name": "cc", "kind": "build"}
                ]
            }]
        });
        let crates = crates_from_metadata(&metadata).expect("metadata");
        assert_eq!(crates[0].dir, PathBuf::from("lib/core"));
        assert_eq!(
            crates[0].dependencies,
            vec![
                ("ring".to_owned(), Kind::Normal),
                ("kl-testkit".to_owned(), Kind::Dev),
                ("cc".to_owned(), Kind::Build)
            ]
        );
    }
}
