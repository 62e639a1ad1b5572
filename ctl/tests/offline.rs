//! kctl's offline commands, run as the binary a user runs: output shapes, exit codes, and the
//! errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kl_core::alg::HashAlg;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lib/core/tests/data/keylime");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn kctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kctl")).args(args).output().expect("kctl runs")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// An ima-ng line for `path` with content digest `sha256(content)`, template hash included.
fn ima_ng_line(path: &str, content: &[u8]) -> String {
    let digest = HashAlg::Sha256.digest(content);
    let mut data = Vec::new();
    let d_ng_len = ("sha256".len() + 2 + 32) as u32;
    data.extend_from_slice(&d_ng_len.to_le_bytes());
    data.extend_from_slice(b"sha256:\0");
    data.extend_from_slice(digest.as_bytes());
    data.extend_from_slice(&((path.len() + 1) as u32).to_le_bytes());
    data.extend_from_slice(path.as_bytes());
    data.push(0);
    let template_hash = HashAlg::Sha1.digest(&data);
    format!("10 {} ima-ng sha256:{} {}\n", template_hash.to_hex(), digest.to_hex(), path)
}

#[test]
fn ima_replay_gives_the_known_pcr10_in_each_bank() {
    let log = fixture("ima/ascii_runtime_measurements");
    let out = kctl(&["ima", "replay", s(&log), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["entries"], 826);
    assert_eq!(v["hash_alg"], "sha256");
    assert_eq!(v["pcr10"], "c4a065637fc6a7c55f2811dd06cb45dd037133be2b3dc5c3e6fbe6bf061db724");
    let out = kctl(&["ima", "replay", s(&log), "--hash-alg", "sha1", "-o", "json"]);
    assert_eq!(json(&out)["pcr10"], "82231c67a69da98dc5b3aa10f6343d33109225fc");
}

#[test]
fn malformed_input_exits_2_naming_file_and_position() {
    let bad = fixture("ima/invalid_ima_log.txt");
    let out = kctl(&["ima", "replay", s(&bad), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("invalid_ima_log.txt") && err.contains("line 1"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");

    let bogus = fixture("eventlog/binary_bios_measurements-bogus");
    let out = kctl(&["eventlog", "show", s(&bogus), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("-bogus") && err.contains("byte offset"), "{err}");

    let missing = kctl(&["ima", "replay", "/nonexistent/log"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/log"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(kctl(&["ima"]).status.code(), Some(2));
    let out = kctl(&["policies", "test", "--runtime-policy", "x.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ima-log"));
    assert_eq!(kctl(&["policies", "test"]).status.code(), Some(2));
}

#[test]
fn runtime_policy_from_a_log_passes_it_and_catches_an_unknown_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fixture("ima/ascii_runtime_measurements");
    let policy = dir.path().join("policy.json");
    let out = kctl(&[
        "policies",
        "runtime",
        "generate",
        "--ima-log",
        s(&log),
        "--out",
        s(&policy),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["files"], 816);

    let good_pcr10 = "c4a065637fc6a7c55f2811dd06cb45dd037133be2b3dc5c3e6fbe6bf061db724";
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&policy),
        "--ima-log",
        s(&log),
        "--pcr10",
        good_pcr10,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["passed"], true);
    assert_eq!(v["findings"].as_array().map(Vec::len), Some(0));

    // An unknown file measured after the quote was taken: the quote still matches the prefix,
    // and the new entry is named.
    let tampered = dir.path().join("tampered");
    let mut text = std::fs::read_to_string(&log).expect("fixture");
    text.push_str(&ima_ng_line("/usr/bin/evil", b"not in the policy"));
    std::fs::write(&tampered, text).expect("write");
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&policy),
        "--ima-log",
        s(&tampered),
        "--pcr10",
        good_pcr10,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["passed"], false);
    let f = &v["findings"][0];
    assert_eq!(f["rule"], "ima.not_in_policy");
    assert_eq!(f["path"], "/usr/bin/evil");
    assert_eq!(f["line"], 827);
    assert!(f["message"].as_str().is_some());

    // A quoted PCR 10 no prefix of the log reaches (all zeros would match the empty prefix).
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&policy),
        "--ima-log",
        s(&log),
        "--pcr10",
        &"ab".repeat(32),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert!(
        v["findings"].as_array().expect("list").iter().any(|f| f["rule"] == "ima.pcr10_mismatch")
    );

    // A wrong-length PCR value is a usage error naming the option.
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&policy),
        "--ima-log",
        s(&log),
        "--pcr10",
        "abcd",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--pcr10"));
}

/// The log is appraised while the policy loads, assuming SHA-1 template hashes; a policy that
/// says otherwise gets the log appraised again with its own algorithm. And a broken policy is
/// the error reported, even when the log is broken too.
#[test]
fn the_policy_decides_after_a_log_appraised_ahead_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fixture("ima/ascii_runtime_measurements");
    let policy = dir.path().join("policy.json");
    let out = kctl(&["policies", "runtime", "generate", "--ima-log", s(&log), "--out", s(&policy)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let test = |policy: &Path, log: &Path| {
        kctl(&[
            "policies",
            "test",
            "--runtime-policy",
            s(policy),
            "--ima-log",
            s(log),
            "-o",
            "json",
        ])
    };
    let out = test(&policy, &log);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(&policy).expect("written")).expect("JSON");
    assert_eq!(doc["log_hash_alg"], "sha1");
    doc["log_hash_alg"] = "sha256".into();
    let sha256 = dir.path().join("sha256.json");
    std::fs::write(&sha256, doc.to_string()).expect("write");
    let out = test(&sha256, &log);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let findings = v["findings"].as_array().expect("list");
    assert!(!findings.is_empty());
    assert!(findings.iter().all(|f| f["rule"] == "ima.template_hash"), "{findings:?}");

    let broken_policy = dir.path().join("broken.json");
    std::fs::write(&broken_policy, b"{\"version\": 1,").expect("write");
    let broken_log = fixture("ima/invalid_ima_log.txt");
    let out = test(&broken_policy, &broken_log);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.json"), "{}", stderr(&out));
    let out = test(&policy, &broken_log);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid_ima_log.txt"), "{}", stderr(&out));
}

#[test]
fn keylime_policies_allowlists_and_signed_envelopes_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keylime's flat allowlist + exclude list, written in Keylime's JSON format.
    let list = fixture("policy/ima-allowlist-short.txt");
    let keylime = dir.path().join("keylime.json");
    let out = kctl(&[
        "policies",
        "runtime",
        "generate",
        "--allowlist",
        s(&list),
        "--format",
        "keylime",
        "--out",
        s(&keylime),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&keylime).expect("written")).expect("JSON");
    assert_eq!(doc["meta"]["version"], 1);
    assert!(doc["digests"].as_object().is_some_and(|d| !d.is_empty()));

    // A DSSE-signed Keylime policy with its key; the tampered one is refused as input error.
    let signed = fixture("policy/runtime-policy-test-signed.json");
    let bad = fixture("policy/runtime-policy-test-signed-bad.json");
    let key = fixture("policy/runtime-policy-pubkey.pub");
    let log = fixture("ima/ascii_runtime_measurements");
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&signed),
        "--policy-key",
        s(&key),
        "--ima-log",
        s(&log),
        "-o",
        "json",
    ]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    assert!(json(&out)["ima"]["policy_files"].as_u64().is_some_and(|n| n > 0));
    let out = kctl(&[
        "policies",
        "test",
        "--runtime-policy",
        s(&bad),
        "--policy-key",
        s(&key),
        "--ima-log",
        s(&log),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("signed-bad"), "{}", stderr(&out));
}

#[test]
fn directory_trees_are_hashed_into_a_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("root");
    std::fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("proc")).expect("mkdir");
    std::fs::write(tree.join("usr/bin/tool"), b"tool contents").expect("write");
    std::fs::write(tree.join("proc/skipped"), b"x").expect("write");
    std::os::unix::fs::symlink("tool", tree.join("usr/bin/link")).expect("symlink");
    let out = kctl(&[
        "policies",
        "runtime",
        "generate",
        "--dir",
        s(&tree),
        "--root",
        "/",
        "--skip-path",
        s(&tree.join("proc")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let policy = json(&out);
    let files = policy["files"].as_object().expect("files");
    let want = format!("sha256:{}", HashAlg::Sha256.digest(b"tool contents").to_hex());
    assert_eq!(files["/usr/bin/tool"], serde_json::json!([want]));
    assert_eq!(files.len(), 1, "symlinks and skipped paths are not measured: {files:?}");
}

#[test]
fn event_log_show_replays_to_the_known_values() {
    let log = fixture("eventlog/binary_bios_measurements");
    let out = kctl(&["eventlog", "show", s(&log), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    let sha256 = &v["pcrs"]["sha256"];
    assert_eq!(sha256["0"], "0ee9a7feba8f4172f1a7451594aa5731665a4d353ac61814042ce107a00742f2");
    assert_eq!(sha256["7"], "741fd028c51b4d2fbdcc7f28014cc758d17ccc1fe2ea7ca17b0e8009480a557c");
    assert_eq!(sha256["14"], "17cdefd9548f4383b67a37a901673bf3c8ded6f619d36c8007562de1d93c81cc");
    assert!(v["pcrs"]["sha1"].is_object());
    assert!(v["events"].as_array().is_some_and(|e| e.len() > 100));
    // The table form is for people: one row per event, then the PCRs.
    let out = kctl(&["eventlog", "show", s(&log)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EV_S_CRTM_VERSION") && text.contains("replayed PCRs (sha256)"));
}

#[test]
fn measured_boot_policy_generated_from_one_log_fails_another_naming_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = fixture("eventlog/binary_bios_measurements");
    let other = fixture("eventlog/binary_bios_measurements-secureboot");
    let policy = dir.path().join("mb.json");
    let out = kctl(&[
        "policies",
        "mb",
        "generate",
        "--event-log",
        s(&good),
        "--allow-secureboot-off",
        "--out",
        s(&policy),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Quoted PCRs as `kctl eventlog show -o json` prints them.
    let pcrs = dir.path().join("pcrs.json");
    let shown = json(&kctl(&["eventlog", "show", s(&good), "-o", "json"]));
    std::fs::write(&pcrs, shown["pcrs"].to_string()).expect("write");
    let out = kctl(&[
        "policies",
        "test",
        "--mb-policy",
        s(&policy),
        "--event-log",
        s(&good),
        "--pcrs",
        s(&pcrs),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(json(&out)["measured_boot"]["pcrs_checked"], true);

    let out = kctl(&[
        "policies",
        "test",
        "--mb-policy",
        s(&policy),
        "--event-log",
        s(&other),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let findings = v["findings"].as_array().expect("findings");
    assert!(findings.iter().all(|f| f["rule"].as_str().is_some_and(|r| r.starts_with("mb."))));
    assert!(
        findings.iter().all(|f| f["event"].is_u64()),
        "every finding names its event: {findings:?}"
    );

    // Without --allow-secureboot-off the policy requires Secure Boot, which this log lacks.
    let strict = dir.path().join("strict.json");
    kctl(&["policies", "mb", "generate", "--event-log", s(&good), "--out", s(&strict)]);
    let out = kctl(&[
        "policies",
        "test",
        "--mb-policy",
        s(&strict),
        "--event-log",
        s(&good),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        json(&out)["findings"]
            .as_array()
            .expect("list")
            .iter()
            .any(|f| f["rule"] == "mb.secureboot_disabled")
    );
}

#[test]
fn files_signed_by_several_keys_pass_and_bad_signatures_are_named() {
    let dir = Path::new(FIXTURES).join("../ima-multikey");
    for policy in ["policy-keylime.json", "policy-native.json"] {
        let policy = dir.join(policy);
        let run = |log: &str| {
            kctl(&[
                "policies",
                "test",
                "--runtime-policy",
                s(&policy),
                "--ima-log",
                s(&dir.join(log)),
                "-o",
                "json",
            ])
        };
        let out = run("signed-good");
        assert_eq!(out.status.code(), Some(0), "{}: {}", policy.display(), stderr(&out));
        let v = json(&out);
        assert_eq!(
            (v["passed"].clone(), v["ima"]["entries"].clone()),
            (Value::Bool(true), 5.into())
        );

        let out = run("signed-bad");
        assert_eq!(out.status.code(), Some(1), "{}: {}", policy.display(), stderr(&out));
        let v = json(&out);
        assert_eq!(v["passed"], false);
        let findings: Vec<_> = v["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| {
                let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                (text("rule"), f["line"].as_u64().unwrap_or(0), text("path"), text("message"))
            })
            .collect();
        let expected = [
            ("ima.signature", 6, "/usr/bin/modified", "does not verify with key id 5ffeaae5"),
            ("ima.not_in_policy", 7, "/usr/bin/outsider", "signed by unknown key id 2940f65a"),
            ("ima.signature", 8, "/usr/bin/wrong-keyid", "does not verify with key id 5ffeaae5"),
            ("ima.signature", 9, "/usr/bin/claims-rsa", "does not verify with key id 3bcb125b"),
        ];
        assert_eq!(findings.len(), expected.len(), "{findings:?}");
        for ((rule, line, path, message), (want_rule, want_line, want_path, want_message)) in
            findings.iter().zip(expected)
        {
            assert_eq!((rule.as_str(), *line, path.as_str()), (want_rule, want_line, want_path));
            assert!(message.contains(want_message), "{message}");
        }
    }
}

#[test]
fn policy_digest_is_the_same_for_every_spelling_of_one_policy_and_names_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = fixture("policy/ima-allowlist-short.txt");
    let digest = |file: &Path| {
        let out = kctl(&["policies", "runtime", "digest", "--file", s(file), "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json(&out)
    };
    // The allowlist, and the same policy written as Keylime JSON and as this project's JSON.
    let mut docs = vec![digest(&list)];
    for format in ["keylime", "native"] {
        let path = dir.path().join(format!("{format}.json"));
        let out = kctl(&[
            "policies",
            "runtime",
            "generate",
            "--allowlist",
            s(&list),
            "--format",
            format,
            "--out",
            s(&path),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        docs.push(digest(&path));
    }
    let formats: Vec<&str> = docs.iter().map(|d| d["format"].as_str().unwrap_or("")).collect();
    assert_eq!(formats, ["allowlist", "keylime", "native"]);
    for d in &docs {
        assert_eq!(d["digest"], docs[0]["digest"], "{d}");
        assert_eq!(d["entries"], docs[0]["entries"]);
        assert_eq!(d["document"], docs[0]["document"]);
    }
    assert!(docs[0]["entries"].as_u64().is_some_and(|n| n > 0));
    let hex = docs[0]["digest"].as_str().expect("digest");
    assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex}");

    // An exclude list changes the canonical document, hence the digest.
    let exclude = dir.path().join("exclude.txt");
    std::fs::write(&exclude, "^/tmp/.*\n").expect("write");
    let out = kctl(&[
        "policies",
        "runtime",
        "digest",
        "--file",
        s(&list),
        "--exclude",
        s(&exclude),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_ne!(json(&out)["digest"], docs[0]["digest"]);

    // A missing file and a malformed one: exit 2 naming the file.
    let missing = dir.path().join("missing-policy.json");
    let out = kctl(&["policies", "runtime", "digest", "--file", s(&missing), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing-policy.json"), "{}", stderr(&out));
    let bad = dir.path().join("bad-mb.json");
    std::fs::write(&bad, "{\"firmware\": 7").expect("write");
    let out = kctl(&["policies", "mb", "digest", "--file", s(&bad), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad-mb.json"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// An ima-buf line measuring `buf` under `name`, template hash included.
fn ima_buf_line(name: &str, buf: &[u8]) -> String {
    let digest = HashAlg::Sha256.digest(buf);
    let mut data = Vec::new();
    data.extend_from_slice(&(("sha256".len() + 2 + 32) as u32).to_le_bytes());
    data.extend_from_slice(b"sha256:\0");
    data.extend_from_slice(digest.as_bytes());
    data.extend_from_slice(&((name.len() + 1) as u32).to_le_bytes());
    data.extend_from_slice(name.as_bytes());
    data.push(0);
    data.extend_from_slice(&(buf.len() as u32).to_le_bytes());
    data.extend_from_slice(buf);
    let template_hash = HashAlg::Sha1.digest(&data);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("10 {} ima-buf sha256:{} {name} {hex}\n", template_hash.to_hex(), digest.to_hex())
}

/// `kctl policies test` appraises the log before the policy is loaded and keeps that result
/// only when the policy confirms every lookup. On a log of signed files (good and bad
/// signatures), a key measured into `.ima` that verifies later files, and a buffer, its
/// report is the one of appraising with the policy directly, for policies that allow,
/// exclude, ignore or refuse each kind of entry.
#[test]
fn a_log_appraised_ahead_of_the_policy_reports_what_the_policy_does() {
    use kl_core::ima::{self, ImaOptions, ImaState, VerificationKeys};
    use kl_core::policy::{self, LoadOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let multikey = Path::new(FIXTURES).join("../ima-multikey");
    let signed = std::fs::read_to_string(multikey.join("signed-bad")).expect("fixture");
    let key_pem = std::fs::read_to_string(multikey.join("keys/rsa2048.pub.pem")).expect("key");
    let key = kl_core::pem::blocks(&key_pem).expect("PEM")[0].decode().expect("base64");
    let cmdline = b"root=/dev/vda1 ro";
    let mut lines: Vec<String> = signed.lines().map(|l| format!("{l}\n")).collect();
    lines.insert(1, ima_buf_line(".ima", &key));
    lines.insert(2, ima_buf_line("kexec-cmdline", cmdline));
    let log_text = lines.concat();
    let log = dir.path().join("log");
    std::fs::write(&log, &log_text).expect("write");

    // Each file's digest as the log has it, and the key's and buffer's.
    let mut files = serde_json::Map::new();
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[2] == "ima-sig" {
            files.insert(fields[4].to_owned(), Value::from(vec![fields[3]]));
        }
    }
    let sha256 = |b: &[u8]| format!("sha256:{}", HashAlg::Sha256.digest(b).to_hex());
    let base = serde_json::json!({
        "version": 1,
        "kind": "runtime",
        "files": files,
        "keyrings": {".ima": [sha256(&key)]},
        "buffers": {"kexec-cmdline": [sha256(cmdline)]},
    });
    let other = format!("sha256:{}", "11".repeat(32));
    let variant = |change: &dyn Fn(&mut Value)| {
        let mut p = base.clone();
        change(&mut p);
        p
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("everything allowed", base.clone(), true),
        (
            "bad signature excluded",
            variant(&|p| {
                p["files"].as_object_mut().expect("map").remove("/usr/bin/modified");
                p["excludes"] = serde_json::json!(["/usr/bin/modified"]);
            }),
            true,
        ),
        (
            "bad signature not allowed",
            variant(&|p| {
                p["files"].as_object_mut().expect("map").remove("/usr/bin/modified");
            }),
            false,
        ),
        (
            "several digests",
            variant(&|p| {
                let d = p["files"]["/usr/bin/outsider"][0].clone();
                p["files"]["/usr/bin/outsider"] = serde_json::json!([other, d]);
            }),
            true,
        ),
        (
            "other digest only",
            variant(&|p| p["files"]["/usr/bin/outsider"] = serde_json::json!([other])),
            false,
        ),
        (
            "keyring ignored",
            variant(&|p| p["ignored_keyrings"] = serde_json::json!([".ima"])),
            true,
        ),
        (
            "keyring ignored, files left to the key",
            variant(&|p| {
                p["ignored_keyrings"] = serde_json::json!(["*"]);
                p["files"].as_object_mut().expect("map").remove("/usr/bin/rsa-signed");
            }),
            false,
        ),
        (
            "files left to the key learned from the keyring",
            variant(&|p| {
                p["files"].as_object_mut().expect("map").remove("/usr/bin/rsa-signed");
            }),
            true,
        ),
        ("keyring not in policy", variant(&|p| p["keyrings"] = serde_json::json!({})), false),
        (
            "keyring with another key",
            variant(&|p| p["keyrings"] = serde_json::json!({".ima": [other]})),
            false,
        ),
        ("keyring excluded", variant(&|p| p["excludes"] = serde_json::json!(["\\.ima"])), true),
        ("buffer not in policy", variant(&|p| p["buffers"] = serde_json::json!({})), false),
        (
            "buffer excluded",
            variant(&|p| {
                p["buffers"] = serde_json::json!({});
                p["excludes"] = serde_json::json!(["kexec-"]);
            }),
            true,
        ),
    ];
    let quoted = ima::replay_log(log_text.as_bytes(), &[HashAlg::Sha256]).expect("replays").pcrs[0];
    for (what, doc, passes) in cases {
        let path = dir.path().join("policy.json");
        let bytes = serde_json::to_vec(&doc).expect("JSON");
        std::fs::write(&path, &bytes).expect("write");
        let policy = policy::load(&bytes, &LoadOptions::default()).expect("policy loads").0;
        let real = ima::appraise_log(
            log_text.as_bytes(),
            &policy,
            &VerificationKeys::new(),
            &ImaState::default(),
            &ImaOptions { log_hash_alg: policy.log_hash_alg(), ..ImaOptions::default() },
            &quoted,
        )
        .expect("appraises");
        let out = kctl(&[
            "policies",
            "test",
            "--runtime-policy",
            s(&path),
            "--ima-log",
            s(&log),
            "-o",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(if passes { 0 } else { 1 }), "{what}: {}", stderr(&out));
        let v = json(&out);
        assert_eq!(v["passed"], passes, "{what}");
        assert_eq!(real.verdict.passed(), passes, "{what}");
        let findings = serde_json::to_value(&real.verdict.findings).expect("JSON");
        assert_eq!(v["findings"], findings, "{what}");
        assert_eq!(v["ima"]["entries"], real.entries, "{what}");
    }
}
