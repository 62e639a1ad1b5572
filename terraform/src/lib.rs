//! `terraform-provider-keylime`: a Terraform provider (plugin protocol 6) for keylime-rs,
//! built on kctl's library so that it reads the tenant configuration, talks to the daemons and
//! delivers payloads exactly as kctl does.
//!
//! Modules: [`plugin`] (go-plugin's handshake), [`provider`] (the `tfplugin6.Provider`
//! service), [`schema`] (the schemas), [`resources`] and [`data`] (managed resources and data
//! sources), [`cty`] (Terraform's values on the wire), [`proto`] (the generated tfplugin6 code).

pub mod cty;
pub mod data;
pub mod plugin;
pub mod provider;
pub mod resources;
pub mod schema;

/// Generated protocol code.
pub mod proto {
    #![allow(clippy::all, missing_docs, missing_debug_implementations)]

    pub mod tfplugin6 {
        tonic::include_proto!("tfplugin6");
    }
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
    pub mod health {
        tonic::include_proto!("grpc.health.v1");
    }
}
