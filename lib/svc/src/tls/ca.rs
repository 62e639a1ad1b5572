//! The certificate authority: creating it, loading it, and issuing server and role certificates.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::files::{self, TlsDir, TlsFiles};
use super::{Role, TlsError};

const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start an hour in the past so peers with a slightly slow clock accept them.
const BACKDATE: Duration = Duration::from_secs(3600);
const ORGANIZATION: &str = "Keylime";
/// Names every generated server certificate carries.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A CA certificate and its signing key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority").field("cert_pem", &self.cert_pem).finish()
    }
}

/// A newly issued certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl IssuedCert {
    /// Writes the certificate (mode 0644) and the key (mode 0600).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        files::write_file(key_path, self.key_pem.as_bytes(), 0o600)?;
        files::write_file(cert_path, self.cert_pem.as_bytes(), 0o644)
    }
}

impl CertificateAuthority {
    /// A new self-signed CA with a fresh P-256 key.
    pub fn generate(common_name: &str) -> Result<Self, TlsError> {
        let gen_err = |source| TlsError::Generate { name: common_name.to_owned(), source };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads `cacert.crt` and `cakey.pem` from a TLS directory.
    pub fn read(tls: &TlsFiles) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (tls.ca_cert(), tls.ca_key());
        let cert_pem = String::from_utf8(files::read(&cert_path)?).map_err(|_| {
            TlsError::Malformed { path: cert_path.clone(), what: "not PEM text".to_owned() }
        })?;
        let key_pem = String::from_utf8(files::read(&key_path)?).map_err(|_| {
            TlsError::Malformed { path: key_path.clone(), what: "not PEM text".to_owned() }
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Malformed {
            path: key_path.clone(),
            what: format!("not a usable private key: {e}"),
        })?;
        let cert_der = files::read_certificates(&cert_path)?.swap_remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| {
            TlsError::Malformed { path: cert_path.clone(), what: format!("bad certificate: {e}") }
        })?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(TlsError::Malformed {
                path: key_path,
                what: format!("does not hold the key of {}", cert_path.display()),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::Malformed {
            path: cert_path.clone(),
            what: format!("not a usable CA: {e}"),
        })?;
        Ok(CertificateAuthority { cert_der, cert_pem, issuer })
    }

    /// Writes `cacert.crt` (0644) and `cakey.pem` (0600).
    pub fn write(&self, tls: &TlsFiles) -> Result<(), TlsError> {
        let key_pem = self.issuer.key().serialize_pem();
        files::write_file(&tls.ca_key(), key_pem.as_bytes(), 0o600)?;
        files::write_file(&tls.ca_cert(), self.cert_pem.as_bytes(), 0o644)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate with a fresh P-256 key. `Role::Server` makes a server certificate
    /// whose SANs are localhost, 127.0.0.1, ::1 and `names` (DNS names or IP addresses); the
    /// other roles make client certificates carrying `urn:keylime:role:<role>` (and `names`).
    pub fn issue(&self, role: Role, name: &str, names: &[String]) -> Result<IssuedCert, TlsError> {
        let gen_err = |source| TlsError::Generate { name: name.to_owned(), source };
        let mut all_names: Vec<String> = Vec::new();
        if role == Role::Server {
            all_names.extend(LOCAL_NAMES.iter().map(|n| (*n).to_owned()));
        }
        for extra in names {
            if !all_names.contains(extra) {
                all_names.push(extra.clone());
            }
        }
        let mut params = CertificateParams::new(all_names).map_err(gen_err)?;
        params.distinguished_name = subject(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if role == Role::Server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let uri = role.uri().try_into().map_err(gen_err)?;
        params.subject_alt_names.push(SanType::URI(uri));
        set_validity(&mut params, LEAF_VALIDITY);
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }
}

/// Makes sure a TLS directory holds a CA, a server certificate and an admin client
/// certificate, creating whichever is missing (`tls_dir = "generate"`). Files already present
/// are reused as they are. Returns whether anything was created.
pub fn ensure_generated(tls: &TlsFiles, server_names: &[String]) -> Result<bool, TlsError> {
    let ca_present = exists(&tls.ca_cert())? || exists(&tls.ca_key())?;
    let ca = if ca_present {
        CertificateAuthority::read(tls)?
    } else {
        for leaf in [tls.server_cert(), tls.client_cert()] {
            if exists(&leaf)? {
                return Err(TlsError::Missing {
                    path: tls.ca_cert(),
                    hint: format!(
                        "{} exists without its CA; remove it or restore the CA",
                        leaf.display()
                    ),
                });
            }
        }
        let ca = CertificateAuthority::generate("Keylime Certificate Authority")?;
        ca.write(tls)?;
        ca
    };
    let mut created = !ca_present;
    if !exists(&tls.server_cert())? || !exists(&tls.server_key())? {
        ca.issue(Role::Server, "keylime server", server_names)?
            .write(&tls.server_cert(), &tls.server_key())?;
        created = true;
    }
    if !exists(&tls.client_cert())? || !exists(&tls.client_key())? {
        ca.issue(Role::Admin, "keylime admin", &[])?
            .write(&tls.client_cert(), &tls.client_key())?;
        created = true;
    }
    Ok(created)
}

/// Resolves `tls_dir` under `keylime_dir`: generates the files for `generate`, and for any
/// other setting checks that the CA certificate is there.
pub fn prepare(
    tls_dir: &TlsDir,
    keylime_dir: &Path,
    server_names: &[String],
) -> Result<TlsFiles, TlsError> {
    let tls = TlsFiles::new(tls_dir.path(keylime_dir));
    if *tls_dir == TlsDir::Generate {
        ensure_generated(&tls, server_names)?;
    } else if !exists(&tls.ca_cert())? {
        return Err(TlsError::Missing {
            path: tls.ca_cert(),
            hint: "start the verifier once with tls_dir = \"generate\" or run `kctl ca init`"
                .to_owned(),
        });
    }
    Ok(tls)
}

/// The names a generated server certificate carries besides localhost, 127.0.0.1 and ::1, for a
/// daemon listening on `ip`: this host's name, and `ip` itself, or for a wildcard address (0.0.0.0,
/// ::) every address of this host's interfaces (not loopback or link-local) and every address its
/// name resolves to; then `extra`
/// (`cert_subject_alternative_names`). Agents on other hosts then reach the daemon by name or
/// address without further settings.
pub fn server_names(ip: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !names.contains(&name) && !LOCAL_NAMES.contains(&name.as_str()) {
            names.push(name);
        }
    };
    let host = host_name();
    if let Some(host) = &host {
        add(host.clone());
    }
    if ip.is_unspecified() {
        // A host name that does not resolve leaves the name alone: the daemon still starts.
        let resolved = host
            .as_deref()
            .and_then(|h| (h, 0u16).to_socket_addrs().ok())
            .into_iter()
            .flatten()
            .map(|a| a.ip())
            .filter(|a| a.is_ipv4() || ip.is_ipv6());
        // Debian maps the host name to 127.0.1.1 only: the interfaces are what other hosts reach.
        for address in interface_addresses().into_iter().chain(resolved) {
            if address.is_ipv4() || ip.is_ipv6() {
                add(address.to_string());
            }
        }
    } else {
        add(ip.to_string());
    }
    for name in extra {
        add(name.clone());
    }
    names
}

/// The addresses of this host's interfaces that another host could use: no loopback, no
/// link-local (those need an interface name to be reached). Empty when they cannot be listed.
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect()
}

/// This host's name as the kernel has it (`uname -n`), when it can be read.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "(none)").then(|| name.to_owned())
}

/// Whether a TLS file is there; "permission denied" is an error, never "missing".
fn exists(path: &Path) -> Result<bool, TlsError> {
    crate::fs::exists(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use crate::tls::role_of;

    #[test]
    fn generate_creates_all_files_with_private_keys_0600_and_reuses_them() -> TestResult {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path().join("cv_ca"));
        assert!(ensure_generated(&tls, &["verifier.example".to_owned()])?);
        for key in [tls.ca_key(), tls.server_key(), tls.client_key()] {
            let mode = std::fs::metadata(&key).map(|m| m.permissions().mode() & 0o777).ok();
            assert_eq!(mode, Some(0o600), "{}", key.display());
        }
        let ca_before = std::fs::read(tls.ca_cert()).ok();
        let server_before = std::fs::read(tls.server_cert()).ok();
        assert!(!ensure_generated(&tls, &[])?);
        assert_eq!(std::fs::read(tls.ca_cert()).ok(), ca_before);
        assert_eq!(std::fs::read(tls.server_cert()).ok(), server_before);

        let client = tls.client_identity()?;
        assert_eq!(role_of(&client.chain[0])?, Some(Role::Admin));
        let server = tls.server_identity()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&server.chain[0])?;
        let names = san_names(&cert);
        for name in ["localhost", "verifier.example", "127.0.0.1", "::1", "urn:keylime:role:server"]
        {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        Ok(())
    }

    fn san_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
        use x509_parser::extensions::GeneralName;
        let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => (*dns).to_owned(),
                GeneralName::URI(uri) => (*uri).to_owned(),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes)
                        .map(|b| std::net::IpAddr::from(b).to_string())
                        .unwrap_or_default(),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .map(|b| std::net::IpAddr::from(b).to_string())
                        .unwrap_or_default(),
                    _ => String::new(),
                },
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The names a generated server certificate carries for `ip`.
    fn generated_names(ip: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path());
        ensure_generated(&tls, &server_names(ip.parse()?, &["extra.example".to_owned()]))?;
        let server = tls.server_identity()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&server.chain[0])?;
        Ok(san_names(&cert))
    }

    #[test]
    fn server_cert_names_the_configured_address_and_this_host() -> TestResult {
        let host = host_name().ok_or("this host has no name")?;
        let names = generated_names("192.0.2.10")?;
        for name in ["localhost", "127.0.0.1", "::1", "192.0.2.10", host.as_str(), "extra.example"]
        {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        Ok(())
    }

    #[test]
    fn server_cert_for_a_wildcard_address_names_this_hosts_addresses() -> TestResult {
        let host = host_name().ok_or("this host has no name")?;
        let names = generated_names("0.0.0.0")?;
        assert!(names.contains(&host), "{host} not in {names:?}");
        assert!(!names.iter().any(|n| n == "0.0.0.0"), "{names:?}");
        let addresses: Vec<String> = (host.as_str(), 0u16)
            .to_socket_addrs()?
            .map(|a| a.ip())
            .filter(|a| a.is_ipv4())
            .map(|a| a.to_string())
            .collect();
        assert!(!addresses.is_empty(), "{host} resolves to no IPv4 address");
        for address in &addresses {
            assert!(names.contains(address), "{address} not in {names:?}");
        }
        // The global IPv4 addresses `ip` lists, which the host name need not resolve to.
        let listed =
            std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output()?;
        let text = String::from_utf8(listed.stdout)?;
        let globals: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("scope global"))
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .filter_map(|cidr| cidr.split('/').next())
            .collect();
        for address in &globals {
            assert!(names.iter().any(|n| n == address), "{address} not in {names:?}");
        }
        Ok(())
    }

    #[test]
    fn missing_server_cert_is_reissued_by_the_existing_ca() -> TestResult {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path());
        ensure_generated(&tls, &[])?;
        let ca_before = std::fs::read(tls.ca_cert()).ok();
        std::fs::remove_file(tls.server_cert())?;
        assert!(ensure_generated(&tls, &[])?);
        assert_eq!(std::fs::read(tls.ca_cert()).ok(), ca_before);
        Ok(())
    }

    #[test]
    fn leaf_without_ca_and_mismatched_ca_key_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let tls = TlsFiles::new(dir.path());
        std::fs::write(tls.server_cert(), "x")?;
        let err = ensure_generated(&tls, &[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cacert.crt: missing"), "{err}");

        let other = tempfile::tempdir()?;
        let a = TlsFiles::new(other.path().join("a"));
        let b = TlsFiles::new(other.path().join("b"));
        CertificateAuthority::generate("a")?.write(&a)?;
        CertificateAuthority::generate("b")?.write(&b)?;
        std::fs::copy(b.ca_key(), a.ca_key())?;
        let err = CertificateAuthority::read(&a).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cakey.pem: does not hold the key of"), "{err}");
        Ok(())
    }

    #[test]
    fn default_tls_dir_without_files_names_the_missing_ca() {
        let dir = tempfile::tempdir().ok();
        let root = dir.as_ref().map(|d| d.path().to_owned()).unwrap_or_default();
        let err = prepare(&TlsDir::Default, &root, &[]).err().map(|e| e.to_string());
        let expected = format!("{}: missing", root.join("cv_ca/cacert.crt").display());
        assert!(err.as_deref().is_some_and(|e| e.starts_with(&expected)), "{err:?}");
    }

    #[test]
    fn issued_role_certs_carry_their_role() -> TestResult {
        let ca = CertificateAuthority::generate("test CA")?;
        for role in [Role::Admin, Role::Viewer, Role::Verifier, Role::Server, Role::Agent] {
            let cert = ca.issue(role, "someone", &[])?;
            assert_eq!(role_of(&cert.cert_der)?, Some(role));
        }
        Ok(())
    }
}
