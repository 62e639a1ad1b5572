//! Payloads delivered again without restarting the agent: after an unenrolment, and in place
//! (`--replace-payload`, `keylime_tenant -c update`), where a failed update leaves the agent
//! enrolled as it was.

use super::*;

/// A payload whose `autorun.sh` writes `name` to `marker` and appends it to `runs` in the
/// agent's directory, so each run is counted.
fn named_payload(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(format!("payload-{name}"));
    std::fs::create_dir_all(&dir)?;
    let script = format!("#!/bin/sh\necho {name} > marker\necho {name} >> ../../runs\n");
    std::fs::write(dir.join("autorun.sh"), script)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_payload_reaches_an_enrolled_or_reenrolled_agent_without_a_restart() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let root = sys.deployment.keylime_dir();
    let id = sys.agent_id.clone();
    let marker = sys.secure_dir().join("marker");
    let runs = sys.agent.dir.join("runs");
    let wait_marker = |name: &str| {
        let want = format!("{name}\n");
        sys.wait(
            |_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == want)),
            &format!("payload {name}"),
        )
    };
    let enroll_with = |payload: &Path| -> Result<Value> {
        let payload = payload.display().to_string();
        let (code, doc) = sys.kctl_json(&[
            "agents",
            "enroll",
            &id,
            "--runtime-policy",
            "base",
            "--payload",
            &payload,
            "--wait",
        ])?;
        assert_eq!(code, 0, "{doc}");
        Ok(doc)
    };

    enroll_with(&named_payload(root, "one")?)?;
    wait_marker("one")?;
    sys.wait(|s| Ok(s.show()?["key_delivered"] == true), "key_delivered")?;

    // Enrolling again with the same settings and no payload changes nothing.
    let (code, again) = sys.kctl_json(&["agents", "enroll", &id, "--runtime-policy", "base"])?;
    assert_eq!(code, 0);
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["key_delivered"], true, "{again}");

    // Unenrolled, then enrolled with another payload: the agent takes the new U without a
    // restart.
    let (code, _) = sys.kctl_json(&["agents", "unenroll", &id])?;
    assert_eq!(code, 0);
    enroll_with(&named_payload(root, "two")?)?;
    wait_marker("two")?;
    sys.wait(|s| Ok(s.show()?["key_delivered"] == true), "key_delivered")?;
    let before = sys.show()?;

    // A replacement naming a policy the verifier does not have: refused before the agent is
    // sent anything (a new U would make it drop its key).
    let dropped =
        |s: &System| s.agent.daemon.output().matches("previous payload key is dropped").count();
    let drops_before = dropped(&sys);
    let four = named_payload(root, "four")?.display().to_string();
    let out = sys.run(
        KCTL,
        &[
            "agents",
            "enroll",
            &id,
            "--runtime-policy",
            "missing",
            "--payload",
            &four,
            "--replace-payload",
        ],
    )?;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime policy missing"));
    assert_eq!(dropped(&sys), drops_before, "the agent was sent nothing");

    // keylime_tenant -c update towards an address where no agent answers: refused before
    // anything changes; the agent stays enrolled as it was.
    let policy_file = root.join("base.json").display().to_string();
    let three = named_payload(root, "three")?.display().to_string();
    let nowhere = daemon::free_port()?.to_string();
    let update = |extra: &[&str]| {
        let mut args = vec!["-u", id.as_str(), "-c", "update", "--runtime-policy", &policy_file];
        args.extend(["--include", &three]);
        args.extend(extra);
        sys.run(TENANT, &args)
    };
    let failed = update(&["-t", "127.0.0.1", "-tp", &nowhere])?;
    assert_eq!(failed.status.code(), Some(4), "{}", String::from_utf8_lossy(&failed.stderr));
    let kept = sys.show()?;
    assert_eq!(kept["runtime_policy"], "base", "the previous enrolment is kept: {kept}");
    assert_eq!(kept["key_delivered"], true);
    assert!(kept["attestation_count"].as_u64() >= before["attestation_count"].as_u64());

    // The update proper: the agent gets the new payload; its attestation goes on.
    let updated = update(&[])?;
    check(&updated, "keylime_tenant -c update")?;
    wait_marker("three")?;
    let after = sys.wait_state("passed")?;
    assert_eq!(after["runtime_policy"], id.as_str(), "the tenant names the policy after the agent");
    assert!(after["attestation_count"].as_u64() >= before["attestation_count"].as_u64());
    sys.wait(|s| Ok(s.show()?["key_delivered"] == true), "key_delivered")?;
    assert_eq!(std::fs::read_to_string(&runs)?, "one\ntwo\nthree\n", "each payload ran once");
    Ok(())
}
