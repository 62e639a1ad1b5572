//! The data sources `keylime_agents` (every agent, as `kctl agents list` merges them) and
//! `keylime_agent` (one, by uuid).

use kctl::api as kctl_api;
use kl_proto::registrar::v1::GetAgentRequest as RegGetAgent;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::verifier::v1::GetAgentRequest;

use crate::cty::{Type, Value};
use crate::resources::{Ctx, Diags, failure};
use crate::schema::{Attr, Block, Mode};

fn agent_fields() -> Vec<(&'static str, Type, &'static str)> {
    vec![
        ("uuid", Type::String, "The agent's UUID."),
        (
            "state",
            Type::String,
            "Attestation state at the verifier (not_enrolled when only registered).",
        ),
        (
            "registered",
            Type::Bool,
            "Whether the registrar knows the agent (null when the registrar cannot be reached).",
        ),
        ("runtime_policy", Type::String, "Name of its runtime policy."),
        ("mb_policy", Type::String, "Name of its measured-boot policy."),
        ("last_success_at", Type::String, "When it last passed attestation (RFC 3339)."),
    ]
}

pub fn agents_schema() -> Block {
    let object = Type::Object(agent_fields().into_iter().map(|(n, t, _)| (n, t)).collect());
    Block {
        description: "Every agent the verifier attests or the registrar knows.",
        attrs: vec![Attr::new(
            "agents",
            Type::list(object),
            Mode::Computed,
            "The agents, by uuid.",
        )],
    }
}

pub fn agent_schema() -> Block {
    let attrs = agent_fields()
        .into_iter()
        .map(|(n, t, d)| {
            Attr::new(n, t, if n == "uuid" { Mode::Required } else { Mode::Computed }, d)
        })
        .collect();
    Block { description: "One agent, by uuid.", attrs }
}

/// An agent as the data sources show it, from kctl's JSON view.
fn agent_value(doc: &serde_json::Value) -> Value {
    let text = |k: &str| Value::opt_string(doc[k].as_str());
    Value::object([
        ("uuid", text("uuid")),
        ("state", text("state")),
        ("registered", doc["registered"].as_bool().map_or(Value::Null, Value::Bool)),
        ("runtime_policy", text("runtime_policy")),
        ("mb_policy", text("measured_boot_policy")),
        ("last_success_at", text("last_success_at")),
    ])
}

pub async fn read_agents(ctx: &Ctx) -> Result<Value, Diags> {
    let mut client = ctx.verifier().await?;
    let registrar = ctx.registrar().await.ok();
    let agents = kctl_api::agent_listing(&mut client, registrar)
        .await
        .map_err(|f| vec![failure("Cannot list the agents", f, None)])?;
    Ok(Value::object([("agents", Value::List(agents.iter().map(agent_value).collect()))]))
}

pub async fn read_agent(ctx: &Ctx, config: &Value) -> Result<Value, Diags> {
    let uuid = config.get("uuid").as_str().unwrap_or_default().to_owned();
    let mut client = ctx.verifier().await?;
    let agent = client
        .get_agent(GetAgentRequest { agent_id: uuid.clone() })
        .await
        .map_err(|s| {
            vec![failure(
                "Cannot read the agent",
                kctl_api::status(&format!("agent {uuid}"), s),
                Some("uuid"),
            )]
        })?
        .into_inner()
        .agent
        .unwrap_or_default();
    let mut doc = kctl_api::agent_json(&agent);
    if let Ok(channel) = ctx.registrar().await {
        let reg = RegistrarClient::new(channel).get_agent(RegGetAgent { agent_id: uuid }).await;
        // Not found is "not registered"; a registrar that cannot answer leaves it unknown (null).
        match reg {
            Ok(_) => doc["registered"] = serde_json::Value::Bool(true),
            Err(s) if s.code() == tonic::Code::NotFound => {
                doc["registered"] = serde_json::Value::Bool(false)
            }
            Err(_) => doc["registered"] = serde_json::Value::Null,
        }
    }
    Ok(agent_value(&doc))
}
