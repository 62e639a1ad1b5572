//! The registrar's Prometheus metrics (`metrics_port`): calls per RPC and outcome, and the
//! registrations pending activation.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kl_svc::metrics::Exposition;
use tonic::Code;

use crate::pending::PendingRegistrations;

/// Calls per (RPC, gRPC status code).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// Counts a call of `rpc` that ended with `code`.
    pub fn count(&self, rpc: &'static str, code: Code) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((rpc, code_name(code))).or_default() += 1;
        }
    }

    pub fn render(&self, pending: &PendingRegistrations) -> String {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let labels: Vec<[(&str, &str); 2]> =
            calls.keys().map(|(rpc, code)| [("rpc", *rpc), ("code", *code)]).collect();
        let samples: Vec<(&[(&str, &str)], u64)> =
            labels.iter().zip(calls.values()).map(|(l, n)| (l.as_slice(), *n)).collect();
        let (count, bytes) = pending.usage();
        let mut e = Exposition::new();
        e.counter(
            "keylime_registrar_requests_total",
            "Calls per RPC and gRPC status code (OK, NOT_FOUND, PERMISSION_DENIED, ...).",
            &samples,
        );
        e.gauge(
            "keylime_registrar_pending_registrations",
            "Registrations waiting for Activate (expired ones not yet swept included).",
            &[(&[], count as u64)],
        );
        e.gauge(
            "keylime_registrar_pending_bytes",
            "Memory held by pending registrations.",
            &[(&[], bytes as u64)],
        );
        e.finish()
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
