//! The `tfplugin6.Provider` service: schemas, configuration and dispatch to the resources and
//! data sources. RPCs this provider has no use for answer UNIMPLEMENTED, which Terraform
//! accepts for them (identity schemas included).

use std::pin::Pin;
use std::sync::Arc;

use kctl::api::{self as kctl_api, Connection};
use tokio::sync::{RwLock, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::cty::{Type, Value};
use crate::data;
use crate::proto::tfplugin6 as tf;
use crate::resources::{self as res, Ctx, Diags, PolicyKind};
use crate::schema::{Attr, Block, Mode, error};

pub const RUNTIME_POLICY: &str = "keylime_runtime_policy";
pub const MB_POLICY: &str = "keylime_mb_policy";
pub const ENROLLMENT: &str = "keylime_agent_enrollment";
pub const AGENTS: &str = "keylime_agents";
pub const AGENT: &str = "keylime_agent";

pub fn provider_schema() -> Block {
    Block {
        description: "keylime-rs: policies and agent enrolment at the verifier. Unset arguments fall back to the tenant configuration as kctl reads it (files and KEYLIME_TENANT_* variables).",
        attrs: vec![
            Attr::new("verifier", Type::String, Mode::Optional, "HOST:PORT of the verifier."),
            Attr::new("registrar", Type::String, Mode::Optional, "HOST:PORT of the registrar."),
            Attr::new(
                "tls_dir",
                Type::String,
                Mode::Optional,
                "Directory with the CA certificate and the admin client certificate and key.",
            ),
            Attr::new("config", Type::String, Mode::Optional, "Tenant configuration file."),
        ],
    }
}

pub fn resource_schema(type_name: &str) -> Option<Block> {
    match type_name {
        RUNTIME_POLICY => Some(res::policy_schema(PolicyKind::Runtime)),
        MB_POLICY => Some(res::policy_schema(PolicyKind::MeasuredBoot)),
        ENROLLMENT => Some(res::enrollment_schema()),
        _ => None,
    }
}

pub fn data_schema(type_name: &str) -> Option<Block> {
    match type_name {
        AGENTS => Some(data::agents_schema()),
        AGENT => Some(data::agent_schema()),
        _ => None,
    }
}

/// The provider, configured once per Terraform operation.
#[derive(Debug)]
pub struct KeylimeProvider {
    ctx: RwLock<Option<Arc<Ctx>>>,
    /// Told when Terraform asks the plugin to stop.
    pub shutdown: watch::Sender<bool>,
}

impl KeylimeProvider {
    pub fn new(shutdown: watch::Sender<bool>) -> Self {
        KeylimeProvider { ctx: RwLock::new(None), shutdown }
    }

    async fn ctx(&self) -> Result<Arc<Ctx>, Diags> {
        self.ctx.read().await.clone().ok_or_else(|| {
            vec![error(
                "Provider not configured",
                "the keylime provider was not configured before use",
                None,
            )]
        })
    }
}

fn decode(v: Option<&tf::DynamicValue>) -> Result<Value, Diags> {
    let Some(v) = v else { return Ok(Value::Null) };
    if !v.msgpack.is_empty() {
        return Value::from_msgpack(&v.msgpack).map_err(|e| {
            vec![error("Cannot decode a value from Terraform", format!("{e:#}"), None)]
        });
    }
    if !v.json.is_empty() {
        return Value::from_json(&v.json).map_err(|e| {
            vec![error("Cannot decode a value from Terraform", format!("{e:#}"), None)]
        });
    }
    Ok(Value::Null)
}

fn encode(v: &Value) -> Option<tf::DynamicValue> {
    Some(tf::DynamicValue { msgpack: v.to_msgpack(), json: Vec::new() })
}

fn unknown_type(kind: &str, name: &str) -> Diags {
    vec![error(
        format!("Unknown {kind} type"),
        format!("{name}: this provider has no such {kind}"),
        None,
    )]
}

/// The provider arguments, with a diagnostic for each one not known yet.
fn connection(config: &Value) -> Result<Connection, Diags> {
    let mut diags = Vec::new();
    let mut get = |name: &str| match config.get(name) {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => {
            diags.push(error(
                "Provider argument not known",
                format!(
                    "{name}: set it statically, or leave it unset to use the tenant configuration"
                ),
                Some(name),
            ));
            None
        }
    };
    let conn = Connection {
        verifier: get("verifier"),
        registrar: get("registrar"),
        tls_dir: get("tls_dir").map(Into::into),
        config: get("config").map(Into::into),
    };
    if diags.is_empty() { Ok(conn) } else { Err(diags) }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what} is not supported by terraform-provider-keylime")))
}

#[tonic::async_trait]
impl tf::provider_server::Provider for KeylimeProvider {
    async fn get_metadata(
        &self,
        _: Request<tf::get_metadata::Request>,
    ) -> Result<Response<tf::get_metadata::Response>, Status> {
        unimplemented("GetMetadata")
    }

    async fn get_provider_schema(
        &self,
        _: Request<tf::get_provider_schema::Request>,
    ) -> Result<Response<tf::get_provider_schema::Response>, Status> {
        let resources = [RUNTIME_POLICY, MB_POLICY, ENROLLMENT]
            .into_iter()
            .filter_map(|n| resource_schema(n).map(|b| (n.to_owned(), b.to_proto())))
            .collect();
        let data_sources = [AGENTS, AGENT]
            .into_iter()
            .filter_map(|n| data_schema(n).map(|b| (n.to_owned(), b.to_proto())))
            .collect();
        Ok(Response::new(tf::get_provider_schema::Response {
            provider: Some(provider_schema().to_proto()),
            resource_schemas: resources,
            data_source_schemas: data_sources,
            server_capabilities: Some(tf::ServerCapabilities {
                plan_destroy: false,
                get_provider_schema_optional: true,
                move_resource_state: false,
                generate_resource_config: false,
            }),
            ..Default::default()
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<tf::validate_provider_config::Request>,
    ) -> Result<Response<tf::validate_provider_config::Response>, Status> {
        let diagnostics = match decode(request.get_ref().config.as_ref()) {
            Ok(config) => {
                // Unknown values are fine here; Configure reports them if they stay unknown.
                let mut diags = Vec::new();
                for name in ["verifier", "registrar"] {
                    if let Value::String(addr) = config.get(name)
                        && addr.trim().is_empty()
                    {
                        diags.push(error(
                            "Invalid address",
                            format!("{name}: expected HOST or HOST:PORT, got an empty string"),
                            Some(name),
                        ));
                    }
                }
                diags
            }
            Err(d) => d,
        };
        Ok(Response::new(tf::validate_provider_config::Response { diagnostics }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<tf::validate_resource_config::Request>,
    ) -> Result<Response<tf::validate_resource_config::Response>, Status> {
        let r = request.get_ref();
        let diagnostics = match decode(r.config.as_ref()) {
            Err(d) => d,
            Ok(config) => match r.type_name.as_str() {
                RUNTIME_POLICY => {
                    res::policy_canonical(PolicyKind::Runtime, &config).err().unwrap_or_default()
                }
                MB_POLICY => res::policy_canonical(PolicyKind::MeasuredBoot, &config)
                    .err()
                    .unwrap_or_default(),
                ENROLLMENT => res::validate_enrollment(&config),
                other => unknown_type("resource", other),
            },
        };
        Ok(Response::new(tf::validate_resource_config::Response { diagnostics }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<tf::validate_data_resource_config::Request>,
    ) -> Result<Response<tf::validate_data_resource_config::Response>, Status> {
        let name = &request.get_ref().type_name;
        let diagnostics = if data_schema(name).is_some() {
            Vec::new()
        } else {
            unknown_type("data source", name)
        };
        Ok(Response::new(tf::validate_data_resource_config::Response { diagnostics }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<tf::upgrade_resource_state::Request>,
    ) -> Result<Response<tf::upgrade_resource_state::Response>, Status> {
        let r = request.get_ref();
        let result = (|| {
            let block = resource_schema(&r.type_name)
                .ok_or_else(|| unknown_type("resource", &r.type_name))?;
            let json = r.raw_state.as_ref().map(|s| s.json.as_slice()).unwrap_or_default();
            if json.is_empty() {
                return Ok(Value::Null);
            }
            let stored = Value::from_json(json)
                .map_err(|e| vec![error("Cannot read the stored state", format!("{e:#}"), None)])?;
            // Same schema version: every attribute of the schema, nothing else.
            Ok(res::conform(&block, &stored))
        })();
        Ok(Response::new(match result {
            Ok(v) => tf::upgrade_resource_state::Response {
                upgraded_state: encode(&v),
                diagnostics: Vec::new(),
            },
            Err(diagnostics) => {
                tf::upgrade_resource_state::Response { upgraded_state: None, diagnostics }
            }
        }))
    }

    async fn get_resource_identity_schemas(
        &self,
        _: Request<tf::get_resource_identity_schemas::Request>,
    ) -> Result<Response<tf::get_resource_identity_schemas::Response>, Status> {
        // An empty answer, never an error: Terraform asks on every schema load.
        Ok(Response::new(tf::get_resource_identity_schemas::Response::default()))
    }

    async fn upgrade_resource_identity(
        &self,
        _: Request<tf::upgrade_resource_identity::Request>,
    ) -> Result<Response<tf::upgrade_resource_identity::Response>, Status> {
        unimplemented("UpgradeResourceIdentity")
    }

    async fn configure_provider(
        &self,
        request: Request<tf::configure_provider::Request>,
    ) -> Result<Response<tf::configure_provider::Response>, Status> {
        let result = decode(request.get_ref().config.as_ref()).and_then(|config| {
            let conn = connection(&config)?;
            kctl_api::tenant_config_for(&conn, "")
                .map_err(|f| vec![res::failure("Invalid provider configuration", f, None)])
        });
        let diagnostics = match result {
            Ok(config) => {
                *self.ctx.write().await = Some(Arc::new(Ctx { config }));
                Vec::new()
            }
            Err(d) => d,
        };
        Ok(Response::new(tf::configure_provider::Response { diagnostics }))
    }

    async fn read_resource(
        &self,
        request: Request<tf::read_resource::Request>,
    ) -> Result<Response<tf::read_resource::Response>, Status> {
        let r = request.into_inner();
        let result = async {
            let current = decode(r.current_state.as_ref())?;
            if current.is_null() {
                return Ok(Value::Null);
            }
            let ctx = self.ctx().await?;
            match r.type_name.as_str() {
                RUNTIME_POLICY => res::read_policy(&ctx, PolicyKind::Runtime, &current).await,
                MB_POLICY => res::read_policy(&ctx, PolicyKind::MeasuredBoot, &current).await,
                ENROLLMENT => res::read_enrollment(&ctx, &current).await,
                other => Err(unknown_type("resource", other)),
            }
        }
        .await;
        Ok(Response::new(match result {
            Ok(v) => tf::read_resource::Response {
                new_state: encode(&v),
                private: r.private,
                ..Default::default()
            },
            Err(diagnostics) => tf::read_resource::Response {
                new_state: r.current_state,
                private: r.private,
                diagnostics,
                ..Default::default()
            },
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<tf::plan_resource_change::Request>,
    ) -> Result<Response<tf::plan_resource_change::Response>, Status> {
        let r = request.into_inner();
        let result = (|| {
            let prior = decode(r.prior_state.as_ref())?;
            let proposed = decode(r.proposed_new_state.as_ref())?;
            let config = decode(r.config.as_ref())?;
            match r.type_name.as_str() {
                RUNTIME_POLICY => res::plan_policy(PolicyKind::Runtime, &prior, &proposed, &config),
                MB_POLICY => res::plan_policy(PolicyKind::MeasuredBoot, &prior, &proposed, &config),
                ENROLLMENT => res::plan_enrollment(&prior, &proposed, &config),
                other => Err(unknown_type("resource", other)),
            }
        })();
        Ok(Response::new(match result {
            Ok((planned, requires_replace)) => tf::plan_resource_change::Response {
                planned_state: encode(&planned),
                requires_replace,
                planned_private: r.prior_private,
                ..Default::default()
            },
            Err(diagnostics) => {
                tf::plan_resource_change::Response { diagnostics, ..Default::default() }
            }
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<tf::apply_resource_change::Request>,
    ) -> Result<Response<tf::apply_resource_change::Response>, Status> {
        let r = request.into_inner();
        let result = async {
            let prior = decode(r.prior_state.as_ref())?;
            let planned = decode(r.planned_state.as_ref())?;
            let ctx = self.ctx().await?;
            match r.type_name.as_str() {
                RUNTIME_POLICY => {
                    res::apply_policy(&ctx, PolicyKind::Runtime, &prior, &planned).await
                }
                MB_POLICY => {
                    res::apply_policy(&ctx, PolicyKind::MeasuredBoot, &prior, &planned).await
                }
                ENROLLMENT => res::apply_enrollment(&ctx, &prior, &planned).await,
                other => Err(unknown_type("resource", other)),
            }
        }
        .await;
        Ok(Response::new(match result {
            Ok(v) => tf::apply_resource_change::Response {
                new_state: encode(&v),
                private: r.planned_private,
                ..Default::default()
            },
            // Nothing changed: the prior state stays.
            Err(diagnostics) => tf::apply_resource_change::Response {
                new_state: r.prior_state,
                diagnostics,
                ..Default::default()
            },
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<tf::import_resource_state::Request>,
    ) -> Result<Response<tf::import_resource_state::Response>, Status> {
        let r = request.get_ref();
        let key = match r.type_name.as_str() {
            RUNTIME_POLICY | MB_POLICY => "name",
            ENROLLMENT => "uuid",
            other => {
                return Ok(Response::new(tf::import_resource_state::Response {
                    diagnostics: unknown_type("resource", other),
                    ..Default::default()
                }));
            }
        };
        // Only the identifying attribute; Terraform reads the rest right after.
        let block =
            resource_schema(&r.type_name).unwrap_or(Block { description: "", attrs: Vec::new() });
        let mut state = res::conform(&block, &Value::object([(key, Value::string(r.id.clone()))]));
        state.set(key, Value::string(r.id.clone()));
        Ok(Response::new(tf::import_resource_state::Response {
            imported_resources: vec![tf::import_resource_state::ImportedResource {
                type_name: r.type_name.clone(),
                state: encode(&state),
                private: Vec::new(),
                identity: None,
            }],
            ..Default::default()
        }))
    }

    async fn move_resource_state(
        &self,
        _: Request<tf::move_resource_state::Request>,
    ) -> Result<Response<tf::move_resource_state::Response>, Status> {
        unimplemented("MoveResourceState")
    }

    async fn read_data_source(
        &self,
        request: Request<tf::read_data_source::Request>,
    ) -> Result<Response<tf::read_data_source::Response>, Status> {
        let r = request.into_inner();
        let result = async {
            let config = decode(r.config.as_ref())?;
            let ctx = self.ctx().await?;
            match r.type_name.as_str() {
                AGENTS => data::read_agents(&ctx).await,
                AGENT => data::read_agent(&ctx, &config).await,
                other => Err(unknown_type("data source", other)),
            }
        }
        .await;
        Ok(Response::new(match result {
            Ok(v) => tf::read_data_source::Response { state: encode(&v), ..Default::default() },
            Err(diagnostics) => {
                tf::read_data_source::Response { diagnostics, ..Default::default() }
            }
        }))
    }

    async fn generate_resource_config(
        &self,
        _: Request<tf::generate_resource_config::Request>,
    ) -> Result<Response<tf::generate_resource_config::Response>, Status> {
        unimplemented("GenerateResourceConfig")
    }

    async fn validate_ephemeral_resource_config(
        &self,
        _: Request<tf::validate_ephemeral_resource_config::Request>,
    ) -> Result<Response<tf::validate_ephemeral_resource_config::Response>, Status> {
        unimplemented("ephemeral resources")
    }

    async fn open_ephemeral_resource(
        &self,
        _: Request<tf::open_ephemeral_resource::Request>,
    ) -> Result<Response<tf::open_ephemeral_resource::Response>, Status> {
        unimplemented("ephemeral resources")
    }

    async fn renew_ephemeral_resource(
        &self,
        _: Request<tf::renew_ephemeral_resource::Request>,
    ) -> Result<Response<tf::renew_ephemeral_resource::Response>, Status> {
        unimplemented("ephemeral resources")
    }

    async fn close_ephemeral_resource(
        &self,
        _: Request<tf::close_ephemeral_resource::Request>,
    ) -> Result<Response<tf::close_ephemeral_resource::Response>, Status> {
        unimplemented("ephemeral resources")
    }

    type ListResourceStream = BoxStream<tf::list_resource::Event>;

    async fn list_resource(
        &self,
        _: Request<tf::list_resource::Request>,
    ) -> Result<Response<Self::ListResourceStream>, Status> {
        unimplemented("list resources")
    }

    async fn validate_list_resource_config(
        &self,
        _: Request<tf::validate_list_resource_config::Request>,
    ) -> Result<Response<tf::validate_list_resource_config::Response>, Status> {
        unimplemented("list resources")
    }

    async fn get_functions(
        &self,
        _: Request<tf::get_functions::Request>,
    ) -> Result<Response<tf::get_functions::Response>, Status> {
        Ok(Response::new(tf::get_functions::Response::default()))
    }

    async fn call_function(
        &self,
        _: Request<tf::call_function::Request>,
    ) -> Result<Response<tf::call_function::Response>, Status> {
        unimplemented("functions")
    }

    async fn validate_state_store_config(
        &self,
        _: Request<tf::validate_state_store::Request>,
    ) -> Result<Response<tf::validate_state_store::Response>, Status> {
        unimplemented("state stores")
    }

    async fn configure_state_store(
        &self,
        _: Request<tf::configure_state_store::Request>,
    ) -> Result<Response<tf::configure_state_store::Response>, Status> {
        unimplemented("state stores")
    }

    type ReadStateBytesStream = BoxStream<tf::read_state_bytes::Response>;

    async fn read_state_bytes(
        &self,
        _: Request<tf::read_state_bytes::Request>,
    ) -> Result<Response<Self::ReadStateBytesStream>, Status> {
        unimplemented("state stores")
    }

    async fn write_state_bytes(
        &self,
        _: Request<Streaming<tf::write_state_bytes::RequestChunk>>,
    ) -> Result<Response<tf::write_state_bytes::Response>, Status> {
        unimplemented("state stores")
    }

    async fn get_states(
        &self,
        _: Request<tf::get_states::Request>,
    ) -> Result<Response<tf::get_states::Response>, Status> {
        unimplemented("state stores")
    }

    async fn delete_state(
        &self,
        _: Request<tf::delete_state::Request>,
    ) -> Result<Response<tf::delete_state::Response>, Status> {
        unimplemented("state stores")
    }

    async fn plan_action(
        &self,
        _: Request<tf::plan_action::Request>,
    ) -> Result<Response<tf::plan_action::Response>, Status> {
        unimplemented("actions")
    }

    type InvokeActionStream = BoxStream<tf::invoke_action::Event>;

    async fn invoke_action(
        &self,
        _: Request<tf::invoke_action::Request>,
    ) -> Result<Response<Self::InvokeActionStream>, Status> {
        unimplemented("actions")
    }

    async fn validate_action_config(
        &self,
        _: Request<tf::validate_action_config::Request>,
    ) -> Result<Response<tf::validate_action_config::Response>, Status> {
        unimplemented("actions")
    }

    async fn stop_provider(
        &self,
        _: Request<tf::stop_provider::Request>,
    ) -> Result<Response<tf::stop_provider::Response>, Status> {
        Ok(Response::new(tf::stop_provider::Response::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_provider_arguments_are_errors_on_them() {
        let config = Value::object([
            ("verifier", Value::Unknown),
            ("registrar", Value::string("10.0.0.1:8891")),
            ("tls_dir", Value::Null),
            ("config", Value::Null),
        ]);
        let diags = connection(&config).expect_err("unknown verifier");
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].attribute, Some(crate::schema::path("verifier")));
        assert!(diags[0].detail.contains("set it statically"), "{}", diags[0].detail);
        let known =
            connection(&Value::object([("registrar", Value::string("r:1"))])).expect("known");
        assert_eq!(known.registrar.as_deref(), Some("r:1"));
        assert!(known.verifier.is_none());
    }

    #[test]
    fn stored_state_is_conformed_to_the_schema() {
        let block = resource_schema(RUNTIME_POLICY).expect("schema");
        let stored = Value::from_json(br#"{"name":"p","content":"x","obsolete":1}"#).expect("json");
        let upgraded = res::conform(&block, &stored);
        let Value::Map(attrs) = &upgraded else { panic!("not an object: {upgraded:?}") };
        let names: Vec<&str> = attrs.keys().map(String::as_str).collect();
        assert_eq!(names, ["content", "digest", "entries", "exclude", "name", "signing_key"]);
        assert_eq!(upgraded.get("digest"), &Value::Null);
    }

    #[test]
    fn every_type_has_a_schema() {
        for name in [RUNTIME_POLICY, MB_POLICY, ENROLLMENT] {
            assert!(resource_schema(name).is_some(), "{name}");
        }
        for name in [AGENTS, AGENT] {
            assert!(data_schema(name).is_some(), "{name}");
        }
        assert!(resource_schema("keylime_nothing").is_none());
    }
}
