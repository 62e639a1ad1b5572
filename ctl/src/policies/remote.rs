//! `kctl policies runtime|mb apply|show|list|delete`: named policies stored at the verifier.

use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_proto::verifier::v1::{
    DeleteMeasuredBootPolicyRequest, DeleteRuntimePolicyRequest, GetMeasuredBootPolicyRequest,
    GetRuntimePolicyRequest, ListMeasuredBootPoliciesRequest, ListRuntimePoliciesRequest,
    PutMeasuredBootPolicyRequest, PutPolicyMode, PutRuntimePolicyRequest,
};
use serde_json::{Value, json};

use crate::cli::{Cli, StoredPolicyCommand};
use crate::connect::{self, block_on};
use crate::exit::{CmdResult, Outcome, input};
use crate::input::read;
use crate::output::{self, Format};
use crate::verifier_json as vj;

/// Which kind of policy a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Runtime,
    MeasuredBoot,
}

pub fn run(cli: &Cli, kind: Kind, cmd: &StoredPolicyCommand) -> CmdResult {
    let config = connect::tenant_config(cli)?;
    block_on(async {
        let channel = connect::channel(&config, &config.verifier_ip, config.verifier_port).await?;
        let mut client = VerifierClient::new(channel);
        let doc = match (cmd, kind) {
            (
                StoredPolicyCommand::Apply {
                    name,
                    file,
                    exclude,
                    signing_key,
                    if_absent,
                    must_exist,
                },
                Kind::Runtime,
            ) => {
                let document = read(file)?;
                let exclude_list = exclude.as_deref().map(read).transpose()?.unwrap_or_default();
                let signing_key = signing_key.as_deref().map(read).transpose()?.unwrap_or_default();
                let r = client
                    .put_runtime_policy(PutRuntimePolicyRequest {
                        name: name.clone(),
                        document,
                        exclude_list,
                        signing_key,
                        mode: put_mode(*if_absent, *must_exist).into(),
                    })
                    .await
                    .map_err(|s| {
                        connect::status(
                            &format!("apply runtime policy {name} from {}", file.display()),
                            s,
                        )
                    })?
                    .into_inner();
                applied(r.policy.as_ref().map(vj::policy_info), r.changed)
            }
            (
                StoredPolicyCommand::Apply { name, file, if_absent, must_exist, .. },
                Kind::MeasuredBoot,
            ) => {
                let r = client
                    .put_measured_boot_policy(PutMeasuredBootPolicyRequest {
                        name: name.clone(),
                        document: read(file)?,
                        mode: put_mode(*if_absent, *must_exist).into(),
                    })
                    .await
                    .map_err(|s| {
                        connect::status(
                            &format!("apply measured-boot policy {name} from {}", file.display()),
                            s,
                        )
                    })?
                    .into_inner();
                applied(r.policy.as_ref().map(vj::policy_info), r.changed)
            }
            (StoredPolicyCommand::Show { name }, Kind::Runtime) => {
                let r = client
                    .get_runtime_policy(GetRuntimePolicyRequest { name: name.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("runtime policy {name}"), s))?
                    .into_inner();
                shown(r.policy.as_ref().map(vj::policy_info), &r.document)
            }
            (StoredPolicyCommand::Show { name }, Kind::MeasuredBoot) => {
                let r = client
                    .get_measured_boot_policy(GetMeasuredBootPolicyRequest { name: name.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("measured-boot policy {name}"), s))?
                    .into_inner();
                shown(r.policy.as_ref().map(vj::policy_info), &r.document)
            }
            (StoredPolicyCommand::List, Kind::Runtime) => {
                let r = client
                    .list_runtime_policies(ListRuntimePoliciesRequest {})
                    .await
                    .map_err(|s| connect::status("list runtime policies", s))?
                    .into_inner();
                json!({"policies": r.policies.iter().map(vj::policy_info).collect::<Vec<_>>()})
            }
            (StoredPolicyCommand::List, Kind::MeasuredBoot) => {
                let r = client
                    .list_measured_boot_policies(ListMeasuredBootPoliciesRequest {})
                    .await
                    .map_err(|s| connect::status("list measured-boot policies", s))?
                    .into_inner();
                json!({"policies": r.policies.iter().map(vj::policy_info).collect::<Vec<_>>()})
            }
            (StoredPolicyCommand::Delete { name }, Kind::Runtime) => {
                let changed = client
                    .delete_runtime_policy(DeleteRuntimePolicyRequest { name: name.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("delete runtime policy {name}"), s))?
                    .into_inner()
                    .changed;
                json!({"name": name, "changed": changed})
            }
            (StoredPolicyCommand::Delete { name }, Kind::MeasuredBoot) => {
                let changed = client
                    .delete_measured_boot_policy(DeleteMeasuredBootPolicyRequest {
                        name: name.clone(),
                    })
                    .await
                    .map_err(|s| {
                        connect::status(&format!("delete measured-boot policy {name}"), s)
                    })?
                    .into_inner()
                    .changed;
                json!({"name": name, "changed": changed})
            }
        };
        match cli.output {
            Format::Json => output::json(&doc).map_err(input)?,
            Format::Table => output::text(&table(&doc)).map_err(input)?,
        }
        Ok(Outcome::Ok)
    })?
}

/// `--if-absent` and `--must-exist` (clap refuses both at once).
fn put_mode(if_absent: bool, must_exist: bool) -> PutPolicyMode {
    match (if_absent, must_exist) {
        (true, _) => PutPolicyMode::Create,
        (false, true) => PutPolicyMode::Replace,
        (false, false) => PutPolicyMode::Upsert,
    }
}

fn applied(info: Option<Value>, changed: bool) -> Value {
    let mut doc = info.unwrap_or_else(|| json!({}));
    doc["changed"] = json!(changed);
    doc
}

fn shown(info: Option<Value>, document: &[u8]) -> Value {
    let mut doc = info.unwrap_or_else(|| json!({}));
    doc["document"] = serde_json::from_slice(document).unwrap_or(Value::Null);
    doc
}

fn table(doc: &Value) -> String {
    if let Some(list) = doc["policies"].as_array() {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                vec![
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["digest"].as_str().unwrap_or("").chars().take(16).collect(),
                    p["entries"].to_string(),
                    p["agents"].to_string(),
                    p["updated_at"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        return output::table(&["NAME", "DIGEST", "ENTRIES", "AGENTS", "UPDATED"], &rows);
    }
    let mut shown = doc.clone();
    if let Some(map) = shown.as_object_mut() {
        map.remove("document");
    }
    format!("{}\n", serde_json::to_string_pretty(&shown).unwrap_or_default())
}
