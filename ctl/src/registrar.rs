//! `kctl registrar list|show|delete`: what the registrar knows about agents.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::registrar::v1::{AgentRecord, DeleteAgentRequest, GetAgentRequest};
use serde_json::{Value, json};

use crate::cli::{Cli, RegistrarCommand};
use crate::connect::{self, block_on, rfc3339};
use crate::exit::{CmdResult, Outcome, input};
use crate::output::{self, Format};

pub fn run(cli: &Cli, cmd: &RegistrarCommand) -> CmdResult {
    let config = connect::tenant_config(cli)?;
    block_on(async {
        let channel =
            connect::channel(&config, &config.registrar_ip, config.registrar_port).await?;
        let mut client = RegistrarClient::new(channel);
        match cmd {
            RegistrarCommand::List => {
                let records = connect::registrar_agents(&mut client).await?;
                let agents: Vec<Value> = records.iter().map(record_json).collect();
                match cli.output {
                    Format::Json => output::json(&json!({ "agents": agents })).map_err(input)?,
                    Format::Table => output::text(&table(&agents)).map_err(input)?,
                }
                Ok(Outcome::Ok)
            }
            RegistrarCommand::Show { agent_id } => {
                let agent = client
                    .get_agent(GetAgentRequest { agent_id: agent_id.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("registrar agent {agent_id}"), s))?
                    .into_inner()
                    .agent
                    .map(|a| record_json(&a))
                    .unwrap_or(Value::Null);
                match cli.output {
                    Format::Json => output::json(&agent).map_err(input)?,
                    Format::Table => {
                        output::text(&table(std::slice::from_ref(&agent))).map_err(input)?
                    }
                }
                Ok(Outcome::Ok)
            }
            RegistrarCommand::Delete { agent_id } => {
                let deleted = client
                    .delete_agent(DeleteAgentRequest { agent_id: agent_id.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("registrar delete {agent_id}"), s))?
                    .into_inner()
                    .deleted;
                let doc = json!({ "uuid": agent_id, "agent_id": agent_id, "changed": deleted });
                match cli.output {
                    Format::Json => output::json(&doc).map_err(input)?,
                    Format::Table => output::text(&format!(
                        "{agent_id}: {}\n",
                        if deleted { "deleted" } else { "not registered (nothing to do)" }
                    ))
                    .map_err(input)?,
                }
                Ok(Outcome::Ok)
            }
        }
    })?
}

/// The JSON of one registrar record: blobs in base64, digests in hex, times in RFC 3339,
/// `null` for what is absent. The id is `uuid`, as in every kctl output; `agent_id` repeats it
/// for scripts written against earlier versions.
pub(crate) fn record_json(a: &AgentRecord) -> Value {
    let contact = a.contact.as_ref();
    json!({
        "uuid": a.agent_id,
        "agent_id": a.agent_id,
        "contact_ip": contact.map_or(Value::Null, |c| crate::verifier_json::text_or_null(&c.ip)),
        "contact_port": contact.map(|c| c.port),
        "ek_public": B64.encode(&a.ek_public),
        "ek_certificate": (!a.ek_certificate.is_empty()).then(|| B64.encode(&a.ek_certificate)),
        "ek_intermediate_certificates": a.ek_intermediate_certificates.iter().map(|c| B64.encode(c)).collect::<Vec<_>>(),
        "ek_certificate_verified": a.ek_certificate_verified,
        "ak_public": B64.encode(&a.ak_public),
        "ak_name": hex::encode(&a.ak_name),
        "agent_certificate": B64.encode(&a.agent_certificate),
        "registration_count": a.registration_count,
        "registered_at": rfc3339(a.registered_at.as_ref()),
        "activated_at": rfc3339(a.activated_at.as_ref()),
    })
}

fn table(agents: &[Value]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let contact = match (a["contact_ip"].as_str(), a["contact_port"].as_u64()) {
                (Some(ip), Some(port)) => format!("{ip}:{port}"),
                _ => "-".into(),
            };
            let ek = if a["ek_certificate"].is_null() {
                "none"
            } else if a["ek_certificate_verified"] == true {
                "verified"
            } else {
                "unverified"
            };
            vec![
                a["uuid"].as_str().unwrap_or("").to_owned(),
                contact,
                ek.to_owned(),
                a["registration_count"].to_string(),
                a["activated_at"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    output::table(&["AGENT", "CONTACT", "EK CERT", "REGISTRATIONS", "ACTIVATED"], &rows)
}

#[cfg(test)]
mod tests {
    use kl_proto::registrar::v1::Contact;

    use super::*;

    #[test]
    fn a_record_names_the_agent_uuid_and_keeps_agent_id_as_an_alias() {
        let doc = record_json(&AgentRecord {
            agent_id: "agent-1".into(),
            ek_public: vec![1, 2],
            ..AgentRecord::default()
        });
        assert_eq!(doc["uuid"], "agent-1");
        assert_eq!(doc["agent_id"], "agent-1");
        assert_eq!(doc["ek_public"], "AQI=");
        for key in ["contact_ip", "contact_port", "ek_certificate", "registered_at", "activated_at"]
        {
            assert_eq!(doc[key], Value::Null, "{key} in {doc}");
        }
        let with_contact = record_json(&AgentRecord {
            agent_id: "agent-1".into(),
            contact: Some(Contact { ip: "10.0.0.7".into(), port: 9002 }),
            ..AgentRecord::default()
        });
        assert_eq!(with_contact["contact_ip"], "10.0.0.7");
        assert_eq!(with_contact["contact_port"], 9002);
    }
}
