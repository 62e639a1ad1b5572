//! The verifier over real gRPC and TLS: the registrar's binary and a verifier in-process on
//! port 0, software agents that quote with software AKs and serve synthetic IMA logs.

mod access;
mod attestation;
mod durability;
mod policies;
mod support;
