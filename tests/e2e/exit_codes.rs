//! Exit codes scripts rely on, against the real daemons: kctl's (2 a bad argument, 3 not
//! found, 4 server or transport, 5 refused in the current state) and the daemons' 78 on a
//! configuration error.

use std::time::Duration;

use kl_tests::Result;
use kl_tests::daemon::{self, AGENT, Daemon, KCTL, Program, REGISTRAR, TENANT, VERIFIER};
use kl_tests::deployment::Deployment;

use crate::attestation::System;

/// Runs `program` against the system and returns its exit code and stderr.
fn exit(sys: &System, program: Program, args: &[&str]) -> Result<(i32, String)> {
    let out = sys.run(program, args)?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kctl_exits_2_3_4_and_5_as_the_status_says() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    let long = "x".repeat(300);
    let id = sys.agent_id.clone();

    // 2: an agent id no daemon accepts, named with its value in the message.
    for args in [
        vec!["agents", "show", "bad id!"],
        vec!["agents", "enroll", "with space"],
        vec!["agents", "enroll", "a/b"],
        vec!["agents", "enroll", &long],
        vec!["agents", "unenroll", "bad id!"],
        vec!["agents", "attestations", "bad id!"],
        vec!["registrar", "show", "bad id!"],
        vec!["events", "watch", "--uuid", "bad id!"],
    ] {
        let (code, stderr) = exit(&sys, KCTL, &args)?;
        assert_eq!(code, 2, "kctl {args:?}: {stderr}");
        assert!(stderr.contains("agent_id") && stderr.contains("InvalidArgument"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    let (_, stderr) = exit(&sys, KCTL, &["agents", "show", "bad id!"])?;
    assert!(stderr.contains("\"bad id!\": character ' ' is not allowed"), "{stderr}");
    let (_, stderr) = exit(&sys, KCTL, &["agents", "enroll", &long])?;
    assert!(stderr.contains("300 characters, at most 80 allowed"), "{stderr}");
    let (code, stderr) = exit(&sys, TENANT, &["-u", "bad id!", "-c", "status"])?;
    assert_eq!(code, 2, "keylime_tenant uses kctl's codes: {stderr}");

    // 3: not enrolled, not registered, a policy that does not exist.
    let (code, stderr) = exit(&sys, KCTL, &["agents", "show", "no-such-agent"])?;
    assert_eq!(code, 3, "{stderr}");
    let (code, stderr) = exit(&sys, KCTL, &["agents", "enroll", "no-such-agent"])?;
    assert_eq!(code, 3, "an agent the registrar does not know: {stderr}");
    let (code, stderr) = exit(&sys, KCTL, &["agents", "enroll", &id, "--runtime-policy", "nope"])?;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("\"nope\" does not exist"), "{stderr}");
    let (code, stderr) = exit(&sys, KCTL, &["agents", "enroll", &id, "--mb-policy", "nope"])?;
    assert_eq!(code, 3, "{stderr}");
    let (code, _) = exit(&sys, KCTL, &["policies", "runtime", "show", "nope"])?;
    assert_eq!(code, 3);

    // 5: a policy in use cannot be deleted; the message names the agent using it.
    sys.apply_policy("base")?;
    let (code, stderr) = exit(&sys, KCTL, &["agents", "enroll", &id, "--runtime-policy", "base"])?;
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = exit(&sys, KCTL, &["policies", "runtime", "delete", "base"])?;
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains(&id) && stderr.contains("FailedPrecondition"), "{stderr}");
    let (code, _) = exit(&sys, KCTL, &["policies", "runtime", "show", "base"])?;
    assert_eq!(code, 0, "still there");

    // 4: the verifier is down.
    sys.verifier.stop()?;
    let (code, stderr) = exit(&sys, KCTL, &["agents", "show", &id])?;
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    Ok(())
}

/// Starts `program` with a config file holding `body` (or a path that does not exist) and
/// returns its exit code and output.
fn start_with_config(
    deployment: &Deployment,
    program: Program,
    name: &str,
    body: Option<&str>,
) -> Result<(Option<i32>, String)> {
    let path = deployment.keylime_dir().join(format!("{name}.conf"));
    if let Some(body) = body {
        std::fs::write(&path, body)?;
    }
    let log = deployment.keylime_dir().join(format!("{name}.log"));
    let mut daemon = Daemon::start(program, &path, &log, 0)?;
    let status = daemon.wait_exit(Duration::from_secs(30))?;
    Ok((status.code(), daemon.output()))
}

#[test]
fn each_daemon_exits_78_on_a_configuration_error() -> Result<()> {
    let deployment = Deployment::new()?;
    let dir = deployment.keylime_dir().display().to_string();
    let port = daemon::free_port()?;
    let base = format!("keylime_dir = {dir:?}\nip = \"127.0.0.1\"\nport = {port}\n");
    for program in [REGISTRAR, VERIFIER, AGENT] {
        let cases = [
            ("unknown-key", Some(format!("{base}no_such_option = 1\n")), "no_such_option"),
            ("bad-value", Some(format!("keylime_dir = {dir:?}\nport = \"80a\"\n")), "80a"),
            ("missing-file", None, "missing-file"),
        ];
        for (case, body, named) in cases {
            let name = format!("{}-{case}", program.bin);
            let (code, output) = start_with_config(&deployment, program, &name, body.as_deref())?;
            assert_eq!(code, Some(78), "{} with {case}: {output}", program.bin);
            assert!(output.contains(named), "{} names {named:?}: {output}", program.bin);
        }
    }
    // A value only the verifier can judge, found after the files are read.
    let body = format!("{base}accept_tpm_hash_algs = [\"md5\"]\n");
    let (code, output) =
        start_with_config(&deployment, VERIFIER, "verifier-hash-alg", Some(&body))?;
    assert_eq!(code, Some(78), "{output}");
    assert!(output.contains("md5"), "{output}");
    Ok(())
}
