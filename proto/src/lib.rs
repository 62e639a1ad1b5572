//! `kl-proto`: the v1 gRPC API of the registrar, the verifier and the agent.
//!
//! The `.proto` files under `keylime/` are the source of truth and document every message and
//! field; this crate only compiles them (with a vendored `protoc`) into prost messages and tonic
//! clients and servers. It holds no logic.
//!
//! Modules: [`registrar`], [`verifier`] and [`agent`], each with the package's `v1`.

#![allow(missing_debug_implementations, clippy::all)]

/// The encoded `FileDescriptorSet` of the three v1 packages and the files they import, with
/// source info (the proto comments): what server reflection serves and what the API reference
/// is generated from.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keylime_v1_descriptor.bin"));

pub mod registrar {
    pub mod v1 {
        tonic::include_proto!("keylime.registrar.v1");
    }
}

pub mod verifier {
    pub mod v1 {
        tonic::include_proto!("keylime.verifier.v1");
    }
}

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("keylime.agent.v1");
    }
}
