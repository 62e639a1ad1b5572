//! `kl-proto`: the v1 gRPC API of the registrar, the verifier and the agent.
//!
//! The `.proto` files under `keylime/` are the source of truth and document every message and
//! field; this crate only compiles them (with a vendored `protoc`) into prost messages and tonic
//! clients and servers. It holds no logic.

#![allow(missing_debug_implementations, clippy::all)]

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
