//! The registrar's Prometheus metrics (`metrics_port`): calls per RPC and outcome, and the
//! registrations pending activation.

use kl_svc::metrics::{CallCounts, Exposition};

use crate::pending::PendingRegistrations;

/// The exposition text of one scrape.
pub(crate) fn render(calls: &CallCounts, pending: &PendingRegistrations) -> String {
    let (count, bytes) = pending.usage();
    let mut e = Exposition::new();
    calls.write(
        &mut e,
        "keylime_registrar_requests_total",
        "Calls per RPC and gRPC status code (OK, NOT_FOUND, ...); calls the client abandoned are not counted.",
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
