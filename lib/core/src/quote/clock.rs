//! The TPM clock rules: a genuine TPM's clock never runs backwards within one reset count, and
//! a quote whose clock does not advance past the last accepted one is a replay.

use crate::tpm2::ClockInfo;
use crate::verdict::{Finding, Verdict, rule};

fn clock_json(c: &ClockInfo) -> serde_json::Value {
    serde_json::json!({
        "clock": c.clock,
        "reset_count": c.reset_count,
        "restart_count": c.restart_count,
        "safe": c.safe,
    })
}

/// Compares a quote's clock with the last accepted one, pushing `quote.replayed` or
/// `quote.clock` findings. Returns true when the reset count grew: the machine rebooted and
/// the caller must start its incremental state (IMA, event log) afresh.
///
/// `safe` is not required: after an unorderly shutdown a genuine TPM reports `safe = 0`, and
/// only the ordering within one reset count is evidence of tampering.
pub(crate) fn check(prior: Option<&ClockInfo>, now: &ClockInfo, verdict: &mut Verdict) -> bool {
    let Some(prior) = prior else {
        return false;
    };
    let finding = |rule_id: &str, message: String| {
        Finding::new(rule_id, message).expected(clock_json(prior)).actual(clock_json(now))
    };
    if now.reset_count < prior.reset_count {
        verdict.push(finding(
            rule::QUOTE_REPLAYED,
            format!(
                "resetCount went back from {} to {}: the quote predates the last accepted one",
                prior.reset_count, now.reset_count
            ),
        ));
        return false;
    }
    if now.reset_count > prior.reset_count {
        return true;
    }
    if now.restart_count < prior.restart_count
        || (now.restart_count == prior.restart_count && now.clock <= prior.clock)
    {
        verdict.push(finding(
            rule::QUOTE_REPLAYED,
            format!(
                "clock {} (restartCount {}) does not advance past the last accepted quote's \
                 clock {} (restartCount {}) within resetCount {}",
                now.clock, now.restart_count, prior.clock, prior.restart_count, now.reset_count
            ),
        ));
    } else if now.clock < prior.clock {
        verdict.push(finding(
            rule::QUOTE_CLOCK,
            format!(
                "clock went back from {} to {} within resetCount {} (restartCount {} -> {})",
                prior.clock, now.clock, now.reset_count, prior.restart_count, now.restart_count
            ),
        ));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(clock: u64, reset_count: u32, restart_count: u32) -> ClockInfo {
        ClockInfo { clock, reset_count, restart_count, safe: true }
    }

    fn rules(prior: ClockInfo, now: ClockInfo) -> (Vec<String>, bool) {
        let mut v = Verdict::default();
        let rebooted = check(Some(&prior), &now, &mut v);
        (v.findings.into_iter().map(|f| f.rule).collect(), rebooted)
    }

    #[test]
    fn first_quote_and_advancing_clock_pass() {
        let mut v = Verdict::default();
        assert!(!check(None, &ci(1, 0, 0), &mut v));
        assert!(v.passed());
        assert_eq!(rules(ci(100, 1, 0), ci(101, 1, 0)), (vec![], false));
        assert_eq!(rules(ci(100, 1, 0), ci(150, 1, 1)), (vec![], false));
    }

    #[test]
    fn reboot_allows_any_clock_and_is_reported() {
        let unsafe_now = ClockInfo { safe: false, ..ci(5, 2, 0) };
        assert_eq!(rules(ci(100, 1, 3), unsafe_now), (vec![], true));
    }

    #[test]
    fn equal_or_older_clock_is_a_replay() {
        let replayed = vec![rule::QUOTE_REPLAYED.to_owned()];
        assert_eq!(rules(ci(100, 1, 0), ci(100, 1, 0)), (replayed.clone(), false));
        assert_eq!(rules(ci(100, 1, 0), ci(99, 1, 0)), (replayed.clone(), false));
        assert_eq!(rules(ci(100, 1, 2), ci(200, 1, 1)), (replayed.clone(), false));
        assert_eq!(rules(ci(100, 2, 0), ci(200, 1, 0)), (replayed, false));
    }

    #[test]
    fn clock_going_back_across_a_restart_fails() {
        assert_eq!(rules(ci(100, 1, 0), ci(50, 1, 1)), (vec![rule::QUOTE_CLOCK.to_owned()], false));
    }
}
