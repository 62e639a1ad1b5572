//! The API reference and the wire-compatibility snapshot, checked against the proto files and
//! the daemons' access tables.
//!
//! docs/api.md's generated region is rebuilt from kl-proto's descriptor set (with the proto
//! comments) and the roles in `kl_verifier::RPC_ROLES`, `kl_registrar::RPC_ROLES` and
//! `kl_agent::service::RPC_ROLES`, the tables the daemons check calls against: a role changed
//! in code, or a comment changed in a .proto file, fails here until the doc is regenerated.
//! proto/snapshot/keylime-v1.binpb is the v1 API as released; a change that breaks its wire
//! format fails here.

use std::path::PathBuf;

use kl_tests::apiref::{self, AccessTables};
use kl_tests::compat;
use kl_tests::{Result, err};

const REGENERATE: &str =
    "KEYLIME_UPDATE_API_DOC=1 cargo nextest run -p kl-tests -E 'test(api_reference)'";
const RESNAPSHOT: &str =
    "KEYLIME_UPDATE_API_SNAPSHOT=1 cargo nextest run -p kl-tests -E 'test(wire_compatible)'";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn access() -> AccessTables<'static> {
    AccessTables::from([
        ("keylime.verifier.v1.Verifier", kl_verifier::RPC_ROLES),
        ("keylime.registrar.v1.Registrar", kl_registrar::RPC_ROLES),
        ("keylime.agent.v1.Agent", kl_agent::service::RPC_ROLES),
    ])
}

#[test]
fn api_reference_is_up_to_date() -> Result<()> {
    let path = repo().join("docs/api.md");
    let document = std::fs::read_to_string(&path)?;
    let files = apiref::keylime_files(kl_proto::FILE_DESCRIPTOR_SET)?;
    let expected = apiref::update(&document, &files, &access())?;
    if std::env::var_os("KEYLIME_UPDATE_API_DOC").is_some() {
        std::fs::write(&path, &expected)?;
        return Ok(());
    }
    if document != expected {
        let line = document
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "at the end".to_owned(), |n| format!("from line {}", n + 1));
        return Err(err(format!(
            "docs/api.md is out of date with the .proto files or the daemons' access tables \
             ({line}); regenerate it with:\n    {REGENERATE}"
        )));
    }
    Ok(())
}

#[test]
fn every_rpc_has_an_access_rule_and_every_rule_an_rpc() -> Result<()> {
    let files = apiref::keylime_files(kl_proto::FILE_DESCRIPTOR_SET)?;
    let access = access();
    for file in &files {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            let table =
                access.get(full.as_str()).ok_or_else(|| err(format!("{full}: no table")))?;
            let mut rpcs: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
            let mut rules: Vec<&str> = table.iter().map(|(rpc, _)| *rpc).collect();
            rpcs.sort_unstable();
            rules.sort_unstable();
            assert_eq!(rpcs, rules, "{full}: the RPCs and the access table differ");
        }
    }
    Ok(())
}

#[test]
fn the_v1_packages_stay_wire_compatible_with_the_snapshot() -> Result<()> {
    wire_compatible()
}

fn wire_compatible() -> Result<()> {
    let path = repo().join("proto/snapshot/keylime-v1.binpb");
    let files = apiref::keylime_files(kl_proto::FILE_DESCRIPTOR_SET)?;
    if std::env::var_os("KEYLIME_UPDATE_API_SNAPSHOT").is_some() {
        let old = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let old = compat::decode(&old)?;
        let broken = compat::breaking_changes(&old, &files);
        if !broken.is_empty() {
            return Err(err(format!(
                "refusing to snapshot a wire-breaking change:\n{}",
                broken.join("\n")
            )));
        }
        std::fs::write(&path, compat::snapshot(&files))?;
        return Ok(());
    }
    let snapshot = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let broken = compat::breaking_changes(&compat::decode(&snapshot)?, &files);
    if !broken.is_empty() {
        return Err(err(format!(
            "the .proto files break the v1 wire format (docs/api.md, \"Compatibility\"):\n  {}\n\
             Add instead of changing; a breaking change needs a v2 package. After an addition, \
             record it with:\n    {RESNAPSHOT}",
            broken.join("\n  ")
        )));
    }
    Ok(())
}
