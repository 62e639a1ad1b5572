//! The verifier over real gRPC and TLS: a registrar and a verifier in-process on port 0,
//! software agents that quote with software AKs and serve synthetic IMA logs.

mod access;
mod attestation;
mod durability;
mod policies;
mod support;
