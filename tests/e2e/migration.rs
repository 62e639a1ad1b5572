//! Migrating from Keylime: `kctl config convert` on Keylime's shipped config files, and the
//! drop-in it writes loaded by the daemon it is for (`--print-config`), each converted value in
//! effect.

use std::path::Path;
use std::process::Command;

use kl_tests::daemon::{self, AGENT, KCTL, Program, REGISTRAR, VERIFIER};
use kl_tests::{Result, err};
use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ctl/tests/data/keylime-conf")
        .join(name)
        .display()
        .to_string()
}

/// Numbers compare by value: `5` in the drop-in is `5.0` seconds in `--print-config`, which
/// also hides the path of a webhook URL (`https://host/<path not shown>`).
fn same(effective: &Value, converted: &Value) -> bool {
    match (effective.as_f64(), converted.as_f64(), effective.as_str(), converted.as_str()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(shown), Some(full)) if shown.ends_with("<path not shown>") => {
            full.starts_with(shown.trim_end_matches("<path not shown>"))
        }
        _ => effective == converted,
    }
}

#[test]
fn converted_keylime_configs_load_in_their_daemons() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &[&str], Program); 4] = [
        ("verifier.conf", &[], VERIFIER),
        ("registrar.conf", &[], REGISTRAR),
        ("agent.conf", &[], AGENT),
        ("keylime.conf", &["--component", "verifier"], VERIFIER),
    ];
    for (file, extra, program) in cases {
        let out = Command::new(daemon::binary(KCTL)?)
            .args(["config", "convert", &fixture(file), "-o", "json"])
            .args(extra)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "kctl config convert {file}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let report: Value = serde_json::from_slice(&out.stdout)?;
        let converted = report["converted"].as_array().ok_or_else(|| err("no converted list"))?;
        assert!(converted.len() >= 3, "{file}: {report}");
        // Every option of keylime.conf's verifier section has an equivalent.
        let none_left = file == "keylime.conf";
        assert_eq!(
            report["no_equivalent"].as_array().is_none_or(Vec::is_empty),
            none_left,
            "{file}: {report}"
        );
        let drop_in = dir.path().join(format!("{file}.toml"));
        std::fs::write(&drop_in, report["toml"].as_str().ok_or_else(|| err("no toml"))?)?;

        let printed = Command::new(daemon::binary(program)?)
            .arg("--config")
            .arg(&drop_in)
            .arg("--print-config")
            .env("TSS2_LOG", "all+NONE")
            .output()?;
        assert!(
            printed.status.success(),
            "{file}: {} refused the drop-in: {}",
            program.bin,
            String::from_utf8_lossy(&printed.stderr)
        );
        let effective: Value = serde_json::from_slice(&printed.stdout)?;
        for c in converted {
            let option = c["option"].as_str().ok_or_else(|| err("option"))?;
            assert!(
                same(&effective[option], &c["value"]),
                "{file}: {option} is {} in effect, converted {}",
                effective[option],
                c["value"]
            );
        }
    }
    Ok(())
}

#[test]
fn a_malformed_keylime_file_is_refused_naming_the_file_and_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("verifier.conf");
    std::fs::write(&file, "[verifier]\nip = 0.0.0.0\nquote_interval 2\n")?;
    let out =
        Command::new(daemon::binary(KCTL)?).arg("config").arg("convert").arg(&file).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("kctl: {}:3: expected `option = value`", file.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    Ok(())
}
