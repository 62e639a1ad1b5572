//! The managed resources: `keylime_runtime_policy`, `keylime_mb_policy` and
//! `keylime_agent_enrollment`, each as plan, apply, read and import over the verifier's API.
//!
//! Plans follow Terraform's rules for providers: a configured attribute is planned as its
//! configured value, except that a policy whose canonical digest equals the prior one keeps the
//! prior text (the user's bytes stay in state, and a reformatted document is not a change).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kctl::api::{self as kctl_api, Enrollment, Failure};
use kl_core::policy::canonical::{self, Canonical, CanonicalError};
use kl_proto::verifier::v1::verifier_client::VerifierClient;
use kl_proto::verifier::v1::{
    DeleteMeasuredBootPolicyRequest, DeleteRuntimePolicyRequest, GetAgentRequest,
    GetMeasuredBootPolicyRequest, GetRuntimePolicyRequest, PutMeasuredBootPolicyRequest,
    PutPolicyMode, PutRuntimePolicyRequest, UnenrollAgentRequest,
};
use kl_svc::config::TenantConfig;
use tonic::Code;
use tonic::transport::Channel;

use crate::cty::{Type, Value};
use crate::proto::tfplugin6 as tf;
use crate::schema::{Attr, Block, Mode, error, path};

pub type Diags = Vec<tf::Diagnostic>;

/// What a configured provider talks to.
#[derive(Debug)]
pub struct Ctx {
    pub config: TenantConfig,
}

impl Ctx {
    pub async fn verifier(&self) -> Result<VerifierClient<Channel>, Diags> {
        let c = &self.config;
        kctl_api::channel(c, &c.verifier_ip, c.verifier_port)
            .await
            .map(VerifierClient::new)
            .map_err(|f| vec![failure("Cannot reach the verifier", f, None)])
    }

    pub async fn registrar(&self) -> Result<Channel, Diags> {
        let c = &self.config;
        kctl_api::channel(c, &c.registrar_ip, c.registrar_port)
            .await
            .map_err(|f| vec![failure("Cannot reach the registrar", f, None)])
    }
}

/// A kctl failure as an error diagnostic: the summary says what was being done, the detail is
/// kctl's message (address, file, field).
pub fn failure(summary: &str, f: Failure, attr: Option<&str>) -> tf::Diagnostic {
    error(summary, format!("{:#}", f.into_error()), attr)
}

fn status(summary: &str, what: &str, s: tonic::Status, attr: Option<&str>) -> tf::Diagnostic {
    failure(summary, kctl_api::status(what, s), attr)
}

/// An object with exactly the block's attributes, taken from `v` (missing ones null).
pub fn conform(block: &Block, v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    Value::Map(block.attrs.iter().map(|a| (a.name.to_owned(), v.get(a.name).clone())).collect())
}

/// A list of strings, `None` while unknown.
fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::List(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

// ---- policies -----------------------------------------------------------------------------

/// Which kind of policy a resource manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Runtime,
    MeasuredBoot,
}

impl PolicyKind {
    fn noun(self) -> &'static str {
        match self {
            PolicyKind::Runtime => "runtime policy",
            PolicyKind::MeasuredBoot => "measured-boot policy",
        }
    }
}

pub fn policy_schema(kind: PolicyKind) -> Block {
    let mut attrs = vec![
        Attr::new(
            "name",
            Type::String,
            Mode::Required,
            "The policy's name at the verifier. Changing it replaces the policy.",
        ),
        Attr::new(
            "content",
            Type::String,
            Mode::Required,
            "The policy document, in any format kctl accepts (use file()).",
        ),
    ];
    if kind == PolicyKind::Runtime {
        attrs.push(Attr::new(
            "exclude",
            Type::list(Type::String),
            Mode::Optional,
            "Keylime exclude-list lines (regular expressions of paths not to appraise).",
        ));
        attrs.push(Attr::new(
            "signing_key",
            Type::String,
            Mode::Optional,
            "PEM public key a signed policy document must verify against.",
        ));
    }
    attrs.push(Attr::new(
        "digest",
        Type::String,
        Mode::Computed,
        "SHA-256 of the canonical document, as the verifier reports it (kctl policies ... digest).",
    ));
    attrs.push(Attr::new(
        "entries",
        Type::Number,
        Mode::Computed,
        "Files (runtime) or allowed values (measured boot) the policy lists.",
    ));
    let description = match kind {
        PolicyKind::Runtime => "A named runtime (IMA) policy stored at the verifier.",
        PolicyKind::MeasuredBoot => "A named measured-boot policy stored at the verifier.",
    };
    Block { description, attrs }
}

/// The inputs of a policy as bytes, `None` while any is unknown or the content is null.
fn policy_inputs(config: &Value) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let content = config.get("content").as_str()?.as_bytes().to_vec();
    let exclude = strings(config.get("exclude"))?;
    let exclude =
        if exclude.is_empty() { Vec::new() } else { (exclude.join("\n") + "\n").into_bytes() };
    let key = match config.get("signing_key") {
        Value::Null => Vec::new(),
        Value::String(s) => s.as_bytes().to_vec(),
        _ => return None,
    };
    Some((content, exclude, key))
}

/// The canonical form of the configured policy (`None` while unknown); errors name the
/// attribute at fault.
pub fn policy_canonical(kind: PolicyKind, config: &Value) -> Result<Option<Canonical>, Diags> {
    let Some((content, exclude, key)) = policy_inputs(config) else {
        return Ok(None);
    };
    let result = match kind {
        PolicyKind::Runtime => canonical::runtime(&content, &exclude, &key),
        PolicyKind::MeasuredBoot => canonical::measured_boot(&content),
    };
    result.map(Some).map_err(|e| {
        let attr = match &e {
            CanonicalError::ExcludeList(_) => "exclude",
            CanonicalError::SigningKey(_) => "signing_key",
            _ => "content",
        };
        vec![error(format!("Invalid {}", kind.noun()), format!("{attr}: {e}"), Some(attr))]
    })
}

pub fn plan_policy(
    kind: PolicyKind,
    prior: &Value,
    proposed: &Value,
    config: &Value,
) -> Result<(Value, Vec<tf::AttributePath>), Diags> {
    if proposed.is_null() {
        return Ok((Value::Null, Vec::new()));
    }
    let mut planned = conform(&policy_schema(kind), proposed);
    match policy_canonical(kind, config)? {
        Some(c) => {
            // The one legal way to keep a prior value: prior and config both set, and the
            // verifier would store the same document.
            if !prior.is_null()
                && prior.get("digest").as_str() == Some(c.digest.as_str())
                && !prior.get("content").is_null()
            {
                planned.set("content", prior.get("content").clone());
            }
            planned.set("digest", Value::string(c.digest));
            planned.set("entries", Value::Number(c.entries as f64));
        }
        None => {
            planned.set("digest", Value::Unknown);
            planned.set("entries", Value::Unknown);
        }
    }
    let replace = if !prior.is_null() && prior.get("name") != planned.get("name") {
        vec![path("name")]
    } else {
        Vec::new()
    };
    Ok((planned, replace))
}

pub async fn apply_policy(
    ctx: &Ctx,
    kind: PolicyKind,
    prior: &Value,
    planned: &Value,
) -> Result<Value, Diags> {
    let mut client = ctx.verifier().await?;
    let noun = kind.noun();
    if planned.is_null() {
        let name = prior.get("name").as_str().unwrap_or_default().to_owned();
        let result = match kind {
            PolicyKind::Runtime => client
                .delete_runtime_policy(DeleteRuntimePolicyRequest { name: name.clone() })
                .await
                .map(drop),
            PolicyKind::MeasuredBoot => client
                .delete_measured_boot_policy(DeleteMeasuredBootPolicyRequest { name: name.clone() })
                .await
                .map(drop),
        };
        return match result {
            Ok(()) => Ok(Value::Null),
            // Already gone is what was asked for.
            Err(s) if s.code() == Code::NotFound => Ok(Value::Null),
            Err(s) => Err(vec![status(
                &format!("Cannot delete the {noun}"),
                &format!("delete {noun} {name}"),
                s,
                None,
            )]),
        };
    }
    let name = planned.get("name").as_str().unwrap_or_default().to_owned();
    let Some((document, exclude_list, signing_key)) = policy_inputs(planned) else {
        return Err(vec![error(
            format!("Cannot store the {noun}"),
            format!("{noun} {name}: content, exclude and signing_key must be known at apply"),
            None,
        )]);
    };
    let what = format!("apply {noun} {name}");
    let summary = format!("Cannot store the {noun}");
    // A create never adopts a policy someone else stored under the name: that is an import.
    let mode = if prior.is_null() { PutPolicyMode::Create } else { PutPolicyMode::Upsert } as i32;
    let info = match kind {
        PolicyKind::Runtime => client
            .put_runtime_policy(PutRuntimePolicyRequest {
                name: name.clone(),
                document,
                exclude_list,
                signing_key,
                mode,
            })
            .await
            .map(|r| r.into_inner().policy),
        PolicyKind::MeasuredBoot => client
            .put_measured_boot_policy(PutMeasuredBootPolicyRequest {
                name: name.clone(),
                document,
                mode,
            })
            .await
            .map(|r| r.into_inner().policy),
    }
    .map_err(|s| {
        let exists = s.code() == Code::AlreadyExists;
        let mut d = status(&summary, &what, s, Some("content"));
        if exists {
            d.detail.push_str(&format!(
                "; to manage the stored one, import it: terraform import <address> {name}"
            ));
        }
        vec![d]
    })?
    .unwrap_or_default();
    let mut state = planned.clone();
    state.set("digest", Value::string(info.digest));
    state.set("entries", Value::Number(info.entries as f64));
    Ok(state)
}

pub async fn read_policy(ctx: &Ctx, kind: PolicyKind, current: &Value) -> Result<Value, Diags> {
    let name = current.get("name").as_str().unwrap_or_default().to_owned();
    let mut client = ctx.verifier().await?;
    let noun = kind.noun();
    let reply = match kind {
        PolicyKind::Runtime => client
            .get_runtime_policy(GetRuntimePolicyRequest { name: name.clone() })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.policy, r.document)),
        PolicyKind::MeasuredBoot => client
            .get_measured_boot_policy(GetMeasuredBootPolicyRequest { name: name.clone() })
            .await
            .map(|r| r.into_inner())
            .map(|r| (r.policy, r.document)),
    };
    let (info, document) = match reply {
        Ok((info, document)) => (info.unwrap_or_default(), document),
        Err(s) if s.code() == Code::NotFound => return Ok(Value::Null),
        Err(s) => {
            return Err(vec![status(
                &format!("Cannot read the {noun}"),
                &format!("{noun} {name}"),
                s,
                None,
            )]);
        }
    };
    let mut state = conform(&policy_schema(kind), current);
    // Same digest: the user's text stays. Another digest (changed out of band, or imported):
    // the verifier's document, so that the plan shows the difference.
    if current.get("digest").as_str() != Some(info.digest.as_str())
        || current.get("content").is_null()
    {
        state.set("content", Value::string(String::from_utf8_lossy(&document)));
    }
    state.set("digest", Value::string(info.digest));
    state.set("entries", Value::Number(info.entries as f64));
    Ok(state)
}

// ---- enrolment ----------------------------------------------------------------------------

pub fn enrollment_schema() -> Block {
    Block {
        description: "An agent enrolled at the verifier for attestation, with its policies and an optional payload.",
        attrs: vec![
            Attr::new(
                "uuid",
                Type::String,
                Mode::Required,
                "The agent's UUID. Changing it replaces the enrolment.",
            ),
            Attr::new(
                "runtime_policy",
                Type::String,
                Mode::Optional,
                "Name of the runtime policy to attest against.",
            ),
            Attr::new(
                "mb_policy",
                Type::String,
                Mode::Optional,
                "Name of the measured-boot policy to attest against.",
            ),
            Attr::new(
                "pcr_policy",
                Type::map(Type::list(Type::String)),
                Mode::Optional,
                "PCR number (as a string) to the hex digests allowed for it.",
            ),
            Attr::new(
                "payload",
                Type::String,
                Mode::Optional,
                "Path to a zip file or a directory (with autorun.sh) delivered to the agent with fresh key halves.",
            ),
            Attr::new(
                "cert",
                Type::String,
                Mode::Optional,
                "\"default\": add a certificate for the agent issued by the deployment CA to the payload.",
            ),
            Attr::new(
                "payload_digest",
                Type::String,
                Mode::Computed,
                "SHA-256 of the payload source; a change delivers the payload again.",
            ),
            Attr::new(
                "state",
                Type::String,
                Mode::Computed,
                "The agent's attestation state at the verifier.",
            ),
            Attr::new(
                "enrolled_at",
                Type::String,
                Mode::Computed,
                "When the agent was enrolled (RFC 3339).",
            ),
        ],
    }
}

/// A PCR policy map with lowercase digests, `None` while unknown.
fn pcr_map(v: &Value) -> Option<BTreeMap<String, Vec<String>>> {
    match v {
        Value::Null => Some(BTreeMap::new()),
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| {
                let mut values: Vec<String> =
                    strings(v)?.into_iter().map(|s| s.to_ascii_lowercase()).collect();
                values.sort();
                Some((k.clone(), values))
            })
            .collect(),
        _ => None,
    }
}

/// The configured PCR policy as the verifier takes it.
fn pcr_policy(v: &Value) -> Result<Option<kl_proto::verifier::v1::PcrPolicy>, Diags> {
    let Some(map) = pcr_map(v) else { return Ok(None) };
    if map.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(&map).unwrap_or_default();
    kctl_api::pcr_policy_from_json(&json, "pcr_policy")
        .map(Some)
        .map_err(|f| vec![failure("Invalid PCR policy", f, Some("pcr_policy"))])
}

pub fn validate_enrollment(config: &Value) -> Diags {
    let mut diags = Vec::new();
    if let Value::String(cert) = config.get("cert")
        && cert != "default"
    {
        diags.push(error(
            "Invalid cert",
            format!("cert {cert:?}: the only value is \"default\" (a certificate from the deployment CA)"),
            Some("cert"),
        ));
    }
    if config.get("pcr_policy").is_wholly_known()
        && let Err(d) = pcr_policy(config.get("pcr_policy"))
    {
        diags.extend(d);
    }
    diags
}

/// The digest the verifier records with the enrolment (`kctl agents show` `payload_digest`).
fn payload_digest(config: &Value) -> Result<Value, Diags> {
    let agent_cert = match config.get("cert") {
        Value::Null => false,
        Value::String(_) => true,
        _ => return Ok(Value::Unknown),
    };
    match config.get("payload") {
        Value::Null => Ok(Value::Null),
        Value::String(p) => {
            let spec = kctl_api::PayloadSpec { source: Some(std::path::Path::new(p)), agent_cert };
            kctl_api::payload_digest(&spec)
                .map(Value::string)
                .map_err(|f| vec![failure("Cannot read the payload", f, Some("payload"))])
        }
        _ => Ok(Value::Unknown),
    }
}

pub fn plan_enrollment(
    prior: &Value,
    proposed: &Value,
    config: &Value,
) -> Result<(Value, Vec<tf::AttributePath>), Diags> {
    if proposed.is_null() {
        return Ok((Value::Null, Vec::new()));
    }
    let diags = validate_enrollment(config);
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut planned = conform(&enrollment_schema(), proposed);
    planned.set("payload_digest", payload_digest(config)?);
    // Same digests in another spelling are no change.
    if !prior.is_null()
        && !config.get("pcr_policy").is_null()
        && pcr_map(prior.get("pcr_policy")).is_some()
        && pcr_map(prior.get("pcr_policy")) == pcr_map(config.get("pcr_policy"))
    {
        planned.set("pcr_policy", prior.get("pcr_policy").clone());
    }
    // `payload` too: a new path with the same digest re-enrols nothing, but apply still reports
    // the live state, so planning the prior one would be an inconsistent result.
    let settings =
        ["uuid", "runtime_policy", "mb_policy", "pcr_policy", "payload", "payload_digest", "cert"];
    let unchanged = !prior.is_null() && settings.iter().all(|a| prior.get(a) == planned.get(a));
    for computed in ["state", "enrolled_at"] {
        let value = if unchanged { prior.get(computed).clone() } else { Value::Unknown };
        planned.set(computed, value);
    }
    let replace = if !prior.is_null() && prior.get("uuid") != planned.get("uuid") {
        vec![path("uuid")]
    } else {
        Vec::new()
    };
    Ok((planned, replace))
}

pub async fn apply_enrollment(ctx: &Ctx, prior: &Value, planned: &Value) -> Result<Value, Diags> {
    let mut client = ctx.verifier().await?;
    if planned.is_null() {
        let uuid = prior.get("uuid").as_str().unwrap_or_default().to_owned();
        return match client.unenroll_agent(UnenrollAgentRequest { agent_id: uuid.clone() }).await {
            Ok(_) => Ok(Value::Null),
            Err(s) if s.code() == Code::NotFound => Ok(Value::Null),
            Err(s) => {
                Err(vec![status("Cannot unenrol the agent", &format!("unenroll {uuid}"), s, None)])
            }
        };
    }
    let uuid = planned.get("uuid").as_str().unwrap_or_default().to_owned();
    let runtime_policy = planned.get("runtime_policy").as_str().map(str::to_owned);
    let mb_policy = planned.get("mb_policy").as_str().map(str::to_owned);
    // A policy that does not exist fails here, named, before the agent is sent anything.
    if let Some(name) = &runtime_policy
        && let Err(s) =
            client.get_runtime_policy(GetRuntimePolicyRequest { name: name.clone() }).await
    {
        return Err(vec![status(
            "Cannot enrol the agent",
            &format!("enroll {uuid}: runtime policy {name}"),
            s,
            Some("runtime_policy"),
        )]);
    }
    if let Some(name) = &mb_policy
        && let Err(s) = client
            .get_measured_boot_policy(GetMeasuredBootPolicyRequest { name: name.clone() })
            .await
    {
        return Err(vec![status(
            "Cannot enrol the agent",
            &format!("enroll {uuid}: measured-boot policy {name}"),
            s,
            Some("mb_policy"),
        )]);
    }
    // A create never adopts an agent someone else enrolled (its payload and policies are not
    // this configuration's to overwrite unseen): that is an import.
    if prior.is_null() {
        match client.get_agent(GetAgentRequest { agent_id: uuid.clone() }).await {
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => {
                return Err(vec![status(
                    "Cannot enrol the agent",
                    &format!("agent {uuid}"),
                    s,
                    None,
                )]);
            }
            Ok(_) => {
                return Err(vec![error(
                    "Cannot enrol the agent",
                    format!(
                        "agent {uuid} is already enrolled at the verifier; to manage that \
                         enrolment, import it: terraform import <address> {uuid}"
                    ),
                    Some("uuid"),
                )]);
            }
        }
    }
    // A new enrolment, or a payload that changed, gets fresh key halves; otherwise the
    // settings converge and the payload delivered before stays.
    let redeliver = prior.is_null()
        || prior.get("payload_digest") != planned.get("payload_digest")
        || prior.get("cert") != planned.get("cert");
    let enrollment = Enrollment {
        uuid: uuid.clone(),
        runtime_policy,
        mb_policy,
        pcr_policy: pcr_policy(planned.get("pcr_policy"))?,
        hash_alg: None,
        payload: planned.get("payload").as_str().map(PathBuf::from),
        cert: !planned.get("cert").is_null(),
        agent: None,
        replace_payload: redeliver,
        notices_as: None,
    };
    let reply = kctl_api::enroll_agent(&ctx.config, &mut client, &enrollment)
        .await
        .map_err(|f| vec![failure("Cannot enrol the agent", f, None)])?;
    let agent = reply.agent.unwrap_or_default();
    let mut state = planned.clone();
    state.set("state", Value::string(kctl_api::state_name(agent.state)));
    state.set("enrolled_at", Value::opt_string(kctl_api::rfc3339(agent.enrolled_at.as_ref())));
    Ok(state)
}

pub async fn read_enrollment(ctx: &Ctx, current: &Value) -> Result<Value, Diags> {
    let uuid = current.get("uuid").as_str().unwrap_or_default().to_owned();
    let mut client = ctx.verifier().await?;
    let agent = match client.get_agent(GetAgentRequest { agent_id: uuid.clone() }).await {
        Ok(r) => r.into_inner().agent.unwrap_or_default(),
        Err(s) if s.code() == Code::NotFound => return Ok(Value::Null),
        Err(s) => {
            return Err(vec![status(
                "Cannot read the enrolment",
                &format!("agent {uuid}"),
                s,
                None,
            )]);
        }
    };
    let mut state = conform(&enrollment_schema(), current);
    let text = |s: &str| if s.is_empty() { Value::Null } else { Value::string(s) };
    state.set("runtime_policy", text(&agent.runtime_policy));
    state.set("mb_policy", text(&agent.measured_boot_policy));
    let mut pcrs: BTreeMap<String, Value> = BTreeMap::new();
    for (pcr, values) in agent.pcr_policy.map(|p| p.pcrs).unwrap_or_default() {
        let list = values.values.iter().map(|v| Value::string(hex::encode(v))).collect();
        pcrs.insert(pcr.to_string(), Value::List(list));
    }
    let remote = if pcrs.is_empty() { Value::Null } else { Value::Map(pcrs) };
    // The user's spelling stays while it means the same digests.
    if pcr_map(&remote) != pcr_map(current.get("pcr_policy")) {
        state.set("pcr_policy", remote);
    }
    // A payload delivered out of band (another digest recorded at the verifier) shows as a
    // change that delivers this one again; with no payload configured, the digest a converge
    // keeps at the verifier is not this resource's to track.
    if !current.get("payload_digest").is_null() && !agent.payload_digest.is_empty() {
        state.set("payload_digest", Value::string(&agent.payload_digest));
    }
    // A payload delivered out of band (another digest recorded at the verifier) shows as a
    // change that delivers this one again; with no payload configured, the digest a converge
    // keeps at the verifier is not this resource's to track.
    if !current.get("payload_digest").is_null() && !agent.payload_digest.is_empty() {
        state.set("payload_digest", Value::string(&agent.payload_digest));
    }
    state.set("state", Value::string(kctl_api::state_name(agent.state)));
    state.set("enrolled_at", Value::opt_string(kctl_api::rfc3339(agent.enrolled_at.as_ref())));
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"meta": {"version": 1}, "digests": {"/usr/bin/bash": ["1111111111111111111111111111111111111111111111111111111111111111"]}}"#;

    fn policy_config(content: Value) -> Value {
        Value::object([
            ("name", Value::string("p")),
            ("content", content),
            ("exclude", Value::Null),
            ("signing_key", Value::Null),
            ("digest", Value::Null),
            ("entries", Value::Null),
        ])
    }

    #[test]
    fn a_reformatted_policy_keeps_the_prior_text_and_digest() {
        let config = policy_config(Value::string(POLICY));
        let (first, replace) =
            plan_policy(PolicyKind::Runtime, &Value::Null, &config, &config).expect("plan");
        assert!(replace.is_empty());
        let digest = first.get("digest").as_str().expect("digest known at plan").to_owned();
        assert_eq!(digest.len(), 64);
        // The same document, spaced differently: the prior text stays, nothing changes.
        let respaced = policy_config(Value::string(POLICY.replace(": ", ":")));
        let (second, _) =
            plan_policy(PolicyKind::Runtime, &first, &respaced, &respaced).expect("plan");
        assert_eq!(second, first);
    }

    #[test]
    fn unknown_content_plans_an_unknown_digest_and_a_new_name_replaces() {
        let config = policy_config(Value::Unknown);
        let (planned, _) =
            plan_policy(PolicyKind::Runtime, &Value::Null, &config, &config).expect("plan");
        assert_eq!(planned.get("digest"), &Value::Unknown);
        assert_eq!(planned.get("content"), &Value::Unknown);
        let prior = plan_policy(
            PolicyKind::Runtime,
            &Value::Null,
            &policy_config(Value::string(POLICY)),
            &policy_config(Value::string(POLICY)),
        )
        .expect("plan")
        .0;
        let mut renamed = policy_config(Value::string(POLICY));
        renamed.set("name", Value::string("q"));
        let (_, replace) =
            plan_policy(PolicyKind::Runtime, &prior, &renamed, &renamed).expect("plan");
        assert_eq!(replace, vec![path("name")]);
    }

    #[test]
    fn malformed_content_is_an_error_on_content() {
        let config = policy_config(Value::string("{\"meta\": 7"));
        let diags = plan_policy(PolicyKind::Runtime, &Value::Null, &config, &config)
            .expect_err("malformed");
        assert_eq!(diags[0].attribute, Some(path("content")));
        assert!(diags[0].summary.contains("runtime policy"), "{}", diags[0].summary);
        let mb = policy_config(Value::string("not json"));
        let diags =
            plan_policy(PolicyKind::MeasuredBoot, &Value::Null, &mb, &mb).expect_err("malformed");
        assert!(diags[0].summary.contains("measured-boot"), "{}", diags[0].summary);
    }

    fn enrollment(runtime_policy: &str) -> Value {
        Value::object([
            ("uuid", Value::string("u")),
            ("runtime_policy", Value::string(runtime_policy)),
            ("mb_policy", Value::Null),
            (
                "pcr_policy",
                Value::Map(BTreeMap::from([(
                    "15".to_owned(),
                    Value::List(vec![Value::string("AB".repeat(32))]),
                )])),
            ),
            ("payload", Value::Null),
            ("cert", Value::Null),
            ("payload_digest", Value::Null),
            ("state", Value::Null),
            ("enrolled_at", Value::Null),
        ])
    }

    #[test]
    fn an_enrolment_plans_its_computed_values_unknown_only_when_it_changes() {
        let config = enrollment("a");
        let (created, _) = plan_enrollment(&Value::Null, &config, &config).expect("plan");
        assert_eq!(created.get("state"), &Value::Unknown);
        let mut prior = created.clone();
        prior.set("state", Value::string("passed"));
        prior.set("enrolled_at", Value::string("2026-01-01T00:00:00Z"));
        let (same, _) = plan_enrollment(&prior, &config, &config).expect("plan");
        assert_eq!(same, prior);
        // The same digests in lowercase are no change either.
        let mut lower = config.clone();
        lower.set(
            "pcr_policy",
            Value::Map(BTreeMap::from([(
                "15".to_owned(),
                Value::List(vec![Value::string("ab".repeat(32))]),
            )])),
        );
        assert_eq!(plan_enrollment(&prior, &lower, &lower).expect("plan").0, prior);
        let other = enrollment("b");
        let (changed, replace) = plan_enrollment(&prior, &other, &other).expect("plan");
        assert!(replace.is_empty());
        assert_eq!(changed.get("state"), &Value::Unknown);
        assert_eq!(changed.get("runtime_policy"), &Value::string("b"));
    }

    #[test]
    fn enrolment_inputs_are_checked() {
        let mut config = enrollment("a");
        config.set("cert", Value::string("mine"));
        let diags = validate_enrollment(&config);
        assert_eq!(diags[0].attribute, Some(path("cert")));
        let mut config = enrollment("a");
        config.set(
            "pcr_policy",
            Value::Map(BTreeMap::from([("15".to_owned(), Value::List(vec![Value::string("zz")]))])),
        );
        let diags = validate_enrollment(&config);
        assert_eq!(diags[0].attribute, Some(path("pcr_policy")));
        assert!(validate_enrollment(&enrollment("a")).is_empty());
    }
}
