//! `kctl agents ...`: enrolment at the verifier, merged with what the registrar knows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use kl_proto::registrar::v1::GetAgentRequest as RegGetAgent;
use kl_proto::registrar::v1::registrar_client::RegistrarClient;
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_proto::verifier::v1::{
    AgentState, EnrollAgentRequest, EnrollAgentResponse, GetAgentRequest,
    GetMeasuredBootPolicyRequest, GetRuntimePolicyRequest, ListAgentsRequest,
    ListAttestationsRequest, PcrPolicy, PcrValues, ResumeAgentRequest, StopAgentRequest,
    UnenrollAgentRequest, UpdateAgentRequest,
};
use kl_svc::config::TenantConfig;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cli::{AgentsCommand, Cli, EnrollArgs, UpdateArgs};
use crate::connect::{self, block_on};
use crate::exit::{CmdResult, Failure, Outcome, input};
use crate::input::{display, read};
use crate::output::{self, Format};
use crate::payload;
use crate::verifier_json as vj;

pub fn run(cli: &Cli, cmd: &AgentsCommand) -> CmdResult {
    // Offline: what `enroll` would record for a payload, without a tenant configuration.
    if let AgentsCommand::PayloadDigest { payload: source, cert } = cmd {
        let spec = payload::PayloadSpec { source: source.as_deref(), agent_cert: cert.is_some() };
        let doc = json!({"payload_digest": payload::digest(&spec)?});
        return print(cli, &doc, |d| format!("{}\n", d["payload_digest"].as_str().unwrap_or("")));
    }
    let config = connect::tenant_config(cli)?;
    block_on(async {
        let verifier = connect::channel(&config, &config.verifier_ip, config.verifier_port).await?;
        let mut client = VerifierClient::new(verifier);
        match cmd {
            AgentsCommand::List => {
                let registrar = match connect::channel(
                    &config,
                    &config.registrar_ip,
                    config.registrar_port,
                )
                .await
                {
                    Ok(ch) => Some(ch),
                    Err(e) => {
                        eprintln!(
                            "{}: registrar not reachable, showing the verifier's view only: {:#}",
                            cli.program,
                            e.into_error()
                        );
                        None
                    }
                };
                list(cli, &mut client, registrar).await
            }
            AgentsCommand::Show { uuid } => {
                let reply = client
                    .get_agent(GetAgentRequest { agent_id: uuid.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("agent {uuid}"), s))?
                    .into_inner();
                let mut doc = reply.agent.as_ref().map(vj::agent).unwrap_or(Value::Null);
                if let Ok(ch) =
                    connect::channel(&config, &config.registrar_ip, config.registrar_port).await
                {
                    let reg = RegistrarClient::new(ch)
                        .get_agent(RegGetAgent { agent_id: uuid.clone() })
                        .await;
                    doc["registered"] = json!(reg.is_ok());
                }
                print(cli, &doc, agent_table)
            }
            AgentsCommand::Enroll(args) => enroll(cli, &mut client, args).await,
            AgentsCommand::Update(args) => update(cli, &mut client, args).await,
            AgentsCommand::Unenroll { uuid } => {
                let changed = client
                    .unenroll_agent(UnenrollAgentRequest { agent_id: uuid.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("unenroll {uuid}"), s))?
                    .into_inner()
                    .changed;
                print(cli, &json!({"uuid": uuid, "changed": changed}), |d| format!("{d}\n"))
            }
            AgentsCommand::Stop { uuid } => {
                let r = client
                    .stop_agent(StopAgentRequest { agent_id: uuid.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("stop {uuid}"), s))?
                    .into_inner();
                print(cli, &with_changed(r.agent.as_ref().map(vj::agent), r.changed), agent_table)
            }
            AgentsCommand::Resume { uuid } => {
                let r = client
                    .resume_agent(ResumeAgentRequest { agent_id: uuid.clone() })
                    .await
                    .map_err(|s| connect::status(&format!("resume {uuid}"), s))?
                    .into_inner();
                print(cli, &with_changed(r.agent.as_ref().map(vj::agent), r.changed), agent_table)
            }
            AgentsCommand::Attestations { uuid, limit } => {
                let r = client
                    .list_attestations(ListAttestationsRequest {
                        agent_id: uuid.clone(),
                        page_size: *limit,
                        page_token: String::new(),
                    })
                    .await
                    .map_err(|s| connect::status(&format!("attestations of {uuid}"), s))?
                    .into_inner();
                let list: Vec<Value> = r.attestations.iter().map(vj::attestation).collect();
                print(cli, &json!({"uuid": uuid, "attestations": list}), attestations_table)
            }
            // Answered above, before connecting.
            AgentsCommand::PayloadDigest { .. } => Ok(Outcome::Ok),
        }
    })?
}

fn print(cli: &Cli, doc: &Value, table: impl Fn(&Value) -> String) -> CmdResult {
    match cli.output {
        Format::Json => output::json(doc).map_err(input)?,
        Format::Table => output::text(&table(doc)).map_err(input)?,
    }
    Ok(Outcome::Ok)
}

fn with_changed(agent: Option<Value>, changed: bool) -> Value {
    let mut doc = agent.unwrap_or_else(|| json!({}));
    doc["changed"] = json!(changed);
    doc
}

async fn list(
    cli: &Cli,
    client: &mut VerifierClient<Channel>,
    registrar: Option<Channel>,
) -> CmdResult {
    let agents = agent_listing(client, registrar).await?;
    print(cli, &json!({ "agents": agents }), |d| {
        let rows: Vec<Vec<String>> = d["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                vec![
                    a["uuid"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                    match a["registered"].as_bool() {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "?".into(),
                    },
                    a["attestation_count"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    a["last_success_at"].as_str().unwrap_or("-").to_owned(),
                ]
            })
            .collect();
        output::table(&["UUID", "STATE", "REGISTERED", "ATTESTATIONS", "LAST SUCCESS"], &rows)
    })
}

/// Every agent the verifier attests, merged with the registrar's (when given) by uuid, as
/// `kctl agents list -o json` shows them (`enrolled`, `registered`, `state`, policies, times).
pub async fn agent_listing(
    client: &mut VerifierClient<Channel>,
    registrar: Option<Channel>,
) -> Result<Vec<Value>, Failure> {
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_agents(ListAgentsRequest { page_size: 1000, page_token: token, state: 0 })
            .await
            .map_err(|s| connect::status("verifier ListAgents", s))?
            .into_inner();
        for a in &page.agents {
            let mut doc = vj::agent(a);
            doc["enrolled"] = json!(true);
            merged.insert(a.agent_id.clone(), doc);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if let Some(channel) = registrar {
        let registered = connect::registrar_agents(&mut RegistrarClient::new(channel)).await?;
        for a in &registered {
            let entry =
                merged.entry(a.agent_id.clone()).or_insert_with(|| not_enrolled(&a.agent_id));
            entry["registered"] = json!(true);
            if let (true, Some(c)) = (entry["contact_ip"].is_null(), &a.contact) {
                entry["contact_ip"] = vj::text_or_null(&c.ip);
                entry["contact_port"] = json!(c.port);
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// A registered agent the verifier does not attest: the keys of an enrolled agent's listing
/// that have a value without enrolment, settings `null`.
fn not_enrolled(uuid: &str) -> Value {
    json!({
        "uuid": uuid,
        "state": "not_enrolled",
        "enrolled": false,
        "contact_ip": null,
        "contact_port": null,
        "runtime_policy": null,
        "measured_boot_policy": null,
        "pcr_policy": null,
        "last_verdict": null,
    })
}

/// A PCR policy from a file (or inline JSON): this project's format or Keylime's `tpm_policy`.
fn pcr_policy(arg: &str) -> Result<PcrPolicy, Failure> {
    let (bytes, name) = if arg.trim_start().starts_with('{') {
        (arg.as_bytes().to_vec(), "--pcr-policy".to_owned())
    } else {
        let path = Path::new(arg);
        (read(path)?, display(path))
    };
    pcr_policy_from_json(&bytes, &name)
}

/// A PCR policy document (this project's format or Keylime's `tpm_policy`) as the verifier
/// takes it; `name` says where the document came from in errors.
pub fn pcr_policy_from_json(bytes: &[u8], name: &str) -> Result<PcrPolicy, Failure> {
    let policy = kl_core::policy::PcrPolicy::from_json(bytes)
        .or_else(|native| kl_core::policy::PcrPolicy::from_keylime_json(bytes).map_err(|_| native))
        .map_err(|e| input(anyhow!("{name}: {e}")))?;
    let mut pcrs = std::collections::HashMap::new();
    for pcr in policy.pcrs().iter() {
        let values = policy
            .allowed_hex(pcr)
            .unwrap_or_default()
            .iter()
            .filter_map(|h| hex::decode(h).ok())
            .collect();
        pcrs.insert(pcr, PcrValues { values });
    }
    Ok(PcrPolicy { pcrs })
}

async fn enroll(cli: &Cli, client: &mut VerifierClient<Channel>, args: &EnrollArgs) -> CmdResult {
    let config = connect::tenant_config(cli)?;
    let enrollment = Enrollment {
        uuid: args.uuid.clone(),
        runtime_policy: args.runtime_policy.clone(),
        mb_policy: args.mb_policy.clone(),
        pcr_policy: args.pcr_policy.as_deref().map(pcr_policy).transpose()?,
        hash_alg: args.hash_alg.clone(),
        payload: args.payload.clone(),
        cert: args.cert.is_some(),
        agent: args.agent.clone(),
        replace_payload: args.replace_payload,
        notices_as: Some(cli.program.clone()),
    };
    let reply = enroll_agent(&config, client, &enrollment).await?;
    let mut doc = with_changed(reply.agent.as_ref().map(vj::agent), reply.changed);
    if !args.wait {
        return print(cli, &doc, agent_table);
    }
    let (state, agent) =
        wait(cli, client, &args.uuid, Duration::from_secs_f64(args.timeout)).await?;
    let changed = doc["changed"].clone();
    doc = agent;
    doc["changed"] = changed;
    print(cli, &doc, agent_table)?;
    Ok(if state == AgentState::Passed { Outcome::Ok } else { Outcome::Negative })
}

/// What `kctl agents enroll` asks for, as a library call.
#[derive(Debug, Clone, Default)]
pub struct Enrollment {
    pub uuid: String,
    pub runtime_policy: Option<String>,
    pub mb_policy: Option<String>,
    pub pcr_policy: Option<PcrPolicy>,
    pub hash_alg: Option<String>,
    /// A zip file or a directory whose files are packed, delivered with fresh key halves.
    pub payload: Option<PathBuf>,
    /// Add a certificate for the agent issued by the deployment CA (`--cert default`).
    pub cert: bool,
    /// `HOST:PORT` of the agent when the registrar's contact address is not the one to use.
    pub agent: Option<String>,
    /// Deliver a new payload to an agent that is already enrolled (`--replace-payload`).
    pub replace_payload: bool,
    /// The program name notices on stderr start with; `None` prints none (a library caller
    /// reports through its own channel).
    pub notices_as: Option<String>,
}

/// Enrols an agent at the verifier, first delivering the payload and the U key half to the
/// agent when a payload or a certificate is asked for (see [`bootstrap_key`]).
pub async fn enroll_agent(
    config: &TenantConfig,
    client: &mut VerifierClient<Channel>,
    enrollment: &Enrollment,
) -> Result<EnrollAgentResponse, Failure> {
    let (v_key_half, payload_digest) = if enrollment.payload.is_some() || enrollment.cert {
        bootstrap_key(config, client, enrollment).await?
    } else {
        (Vec::new(), String::new())
    };
    let request = EnrollAgentRequest {
        agent_id: enrollment.uuid.clone(),
        runtime_policy: enrollment.runtime_policy.clone().unwrap_or_default(),
        measured_boot_policy: enrollment.mb_policy.clone().unwrap_or_default(),
        pcr_policy: enrollment.pcr_policy.clone(),
        v_key_half,
        accept_hash_algorithms: Vec::new(),
        accept_signing_algorithms: Vec::new(),
        hash_algorithm: enrollment.hash_alg.clone().unwrap_or_default(),
        payload_digest,
    };
    Ok(client
        .enroll_agent(request)
        .await
        .map_err(|s| connect::status(&format!("enroll {}", enrollment.uuid), s))?
        .into_inner())
}

/// Sends U and the payload to the agent and returns V and the payload's digest, unless the agent
/// is already enrolled
/// (enrolment converges settings; a payload is delivered once) and `--replace-payload` is not
/// given. The agent is reached and its identity quote checked before anything changes at the
/// verifier; with `--replace-payload` the enrolment is then converged in place with the new V,
/// so a refused enrolment leaves the agent enrolled as it was.
async fn bootstrap_key(
    config: &TenantConfig,
    client: &mut VerifierClient<Channel>,
    args: &Enrollment,
) -> Result<(Vec<u8>, String), Failure> {
    let uuid = &args.uuid;
    if !args.replace_payload
        && client.get_agent(GetAgentRequest { agent_id: uuid.clone() }).await.is_ok()
    {
        if let Some(program) = &args.notices_as {
            eprintln!(
                "{program}: {uuid} is already enrolled; its payload is not sent again (--replace-payload sends a new one)"
            );
        }
        return Ok((Vec::new(), String::new()));
    }
    // The policies named must exist before the agent is sent anything: a new U makes the agent
    // drop the key of its previous payload.
    if let Some(name) = args.runtime_policy.as_deref().filter(|n| !n.is_empty()) {
        client
            .get_runtime_policy(GetRuntimePolicyRequest { name: name.to_owned() })
            .await
            .map_err(|s| connect::status(&format!("runtime policy {name}"), s))?;
    }
    if let Some(name) = args.mb_policy.as_deref().filter(|n| !n.is_empty()) {
        client
            .get_measured_boot_policy(GetMeasuredBootPolicyRequest { name: name.to_owned() })
            .await
            .map_err(|s| connect::status(&format!("measured-boot policy {name}"), s))?;
    }
    let registrar = connect::channel(config, &config.registrar_ip, config.registrar_port).await?;
    let record = RegistrarClient::new(registrar)
        .get_agent(RegGetAgent { agent_id: uuid.clone() })
        .await
        .map_err(|s| connect::status(&format!("registrar agent {uuid}"), s))?
        .into_inner()
        .agent
        .ok_or_else(|| Failure::NotFound(anyhow!("registrar agent {uuid}: no record")))?;
    let agent_addr = match &args.agent {
        Some(a) => {
            let (h, p) = a
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?))
                })
                .ok_or_else(|| input(anyhow!("--agent {a:?}: expected HOST:PORT")))?;
            Some((h, p))
        }
        None => None,
    };
    let spec = payload::PayloadSpec { source: args.payload.as_deref(), agent_cert: args.cert };
    let digest = payload::digest(&spec)?;
    let archive = payload::build(config, uuid, &spec)?;
    let v = payload::deliver_u(
        config,
        &record,
        agent_addr.as_ref().map(|(h, p)| (h.as_str(), *p)),
        &archive,
    )
    .await?;
    Ok((v.to_vec(), digest))
}

/// Polls until the agent passes or fails, with a spinner on stderr. Times out into exit 1.
async fn wait(
    cli: &Cli,
    client: &mut VerifierClient<Channel>,
    uuid: &str,
    timeout: Duration,
) -> Result<(AgentState, Value), Failure> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(Duration::from_millis(120));
    let deadline = Instant::now() + timeout;
    loop {
        let reply = client
            .get_agent(GetAgentRequest { agent_id: uuid.to_owned() })
            .await
            .map_err(|s| connect::status(&format!("agent {uuid}"), s))?
            .into_inner();
        let agent = reply.agent.unwrap_or_default();
        let state = AgentState::try_from(agent.state).unwrap_or(AgentState::Unspecified);
        spinner.set_message(format!("{uuid}: {}", vj::state_name(agent.state)));
        let done = matches!(state, AgentState::Passed | AgentState::Failed);
        if done || Instant::now() >= deadline {
            spinner.finish_and_clear();
            if !done {
                eprintln!(
                    "{}: {uuid}: still {} after {:?}",
                    cli.program,
                    vj::state_name(agent.state),
                    timeout
                );
            }
            return Ok((state, vj::agent(&agent)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn update(cli: &Cli, client: &mut VerifierClient<Channel>, args: &UpdateArgs) -> CmdResult {
    let pcr = args.pcr_policy.as_deref().map(pcr_policy).transpose()?;
    let reply = client
        .update_agent(UpdateAgentRequest {
            agent_id: args.uuid.clone(),
            runtime_policy: args.runtime_policy.clone(),
            measured_boot_policy: args.mb_policy.clone(),
            pcr_policy: pcr,
            clear_pcr_policy: args.clear_pcr_policy,
            resume: args.resume,
        })
        .await
        .map_err(|s| connect::status(&format!("update {}", args.uuid), s))?
        .into_inner();
    print(cli, &with_changed(reply.agent.as_ref().map(vj::agent), reply.changed), agent_table)
}

fn agent_table(a: &Value) -> String {
    let mut s = String::new();
    for key in [
        "uuid",
        "state",
        "changed",
        "registered",
        "runtime_policy",
        "measured_boot_policy",
        "attestation_count",
        "last_success_at",
        "last_attestation_at",
        "ima_offset",
    ] {
        if let Some(v) = a.get(key).filter(|v| !v.is_null()) {
            let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            s.push_str(&format!("{key:<22}{text}\n"));
        }
    }
    if let Some(findings) = a["last_verdict"]["findings"].as_array().filter(|f| !f.is_empty()) {
        s.push_str("findings:\n");
        for f in findings {
            s.push_str(&format!(
                "  {}  {}\n",
                f["rule"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

fn attestations_table(d: &Value) -> String {
    let rows: Vec<Vec<String>> = d["attestations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                a["sequence"].to_string(),
                a["at"].as_str().unwrap_or("").to_owned(),
                if a["verdict"]["passed"] == true { "passed".into() } else { "failed".into() },
                a["verdict"]["findings"].as_array().map(|f| f.len()).unwrap_or(0).to_string(),
                a["ima_entries"].to_string(),
                a["duration_us"].to_string(),
            ]
        })
        .collect();
    output::table(&["SEQ", "AT", "VERDICT", "FINDINGS", "IMA ENTRIES", "µs"], &rows)
}
