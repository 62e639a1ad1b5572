//! The `tcti` option: which TPM to talk to, checked before the C loader sees it so that a typo
//! gives an error naming the string rather than "Could not load tcti".

use std::path::PathBuf;
use std::str::FromStr;

use tss_esapi::tcti_ldr::TctiNameConf;

use crate::error::TpmError;

/// A parsed TCTI string such as `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcti {
    text: String,
    conf: TctiNameConf,
}

impl Tcti {
    /// The string as the caller wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The device node, for `device:` TCTIs.
    pub fn device_path(&self) -> Option<PathBuf> {
        let path = self.text.strip_prefix("device")?;
        match path.strip_prefix(':') {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => Some(PathBuf::from("/dev/tpm0")),
        }
    }

    pub(crate) fn name_conf(&self) -> TctiNameConf {
        self.conf.clone()
    }
}

impl FromStr for Tcti {
    type Err = TpmError;

    fn from_str(text: &str) -> Result<Self, TpmError> {
        let invalid = |reason: &str| TpmError::InvalidTcti {
            tcti: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, conf) = text.split_once(':').unwrap_or((text, ""));
        match kind {
            "device" | "tabrmd" => {}
            "swtpm" | "mssim" => check_network_conf(conf).map_err(|reason| invalid(&reason))?,
            "" => return Err(invalid("empty TCTI name")),
            other => {
                return Err(invalid(&format!(
                    "unknown TCTI {other:?} (known: device, swtpm, mssim, tabrmd)"
                )));
            }
        }
        let conf = TctiNameConf::from_str(text)
            .map_err(|e| invalid(&format!("not accepted by the TCTI loader: {e}")))?;
        Ok(Tcti { text: text.to_owned(), conf })
    }
}

/// Checks `host=H,port=P` (either may be absent) with a message naming the bad part.
fn check_network_conf(conf: &str) -> Result<(), String> {
    if conf.is_empty() {
        return Ok(());
    }
    for part in conf.split(',') {
        match part.split_once('=') {
            Some(("host", host)) => {
                let valid = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
                if host.is_empty() || !host.chars().all(valid) {
                    return Err(format!("host {host:?} is not a host name or IP address"));
                }
            }
            Some(("port", port)) => {
                let port: u16 =
                    port.parse().map_err(|_| format!("port {port:?} is not a port number"))?;
                if port == u16::MAX {
                    return Err("port 65535 leaves no room for the control port (port + 1)".into());
                }
            }
            _ => return Err(format!("{part:?} is not host=HOST or port=PORT")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let dev: Tcti = "device:/dev/tpmrm0".parse().expect("device tcti");
        assert_eq!(dev.device_path(), Some(PathBuf::from("/dev/tpmrm0")));
        let sw: Tcti = "swtpm:host=127.0.0.1,port=2321".parse().expect("swtpm tcti");
        assert_eq!(sw.as_str(), "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(sw.device_path(), None);
        let _: Tcti = "swtpm:port=2321,host=localhost".parse().expect("swtpm tcti");
    }

    #[test]
    fn rejects_typos_naming_the_input() {
        for (text, needle) in [
            ("swtpm:host=127.0.0.1,port=23x1", "\"23x1\" is not a port number"),
            ("swtpm:host=127.0.0.1;port=1", "is not a host name or IP address"),
            ("swtpm:hots=127.0.0.1", "is not host=HOST or port=PORT"),
            ("tpm:/dev/tpm0", "unknown TCTI \"tpm\""),
            ("", "empty TCTI name"),
        ] {
            let err = text.parse::<Tcti>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }
}
