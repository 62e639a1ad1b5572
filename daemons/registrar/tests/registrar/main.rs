//! The registrar over real gRPC and TLS, with software agents.

mod support;

mod access;
mod binary;
mod registration;
mod security;
