//! Roles carried by certificates as a URI SAN `urn:keylime:role:<role>`.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use super::TlsError;

/// The URI SAN prefix that names a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:keylime:role:";

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Every admin RPC.
    Admin,
    /// Read-only RPCs.
    Viewer,
    /// What a verifier needs: registrar reads and agent calls.
    Verifier,
    /// A daemon's server certificate; grants nothing as a client.
    Server,
    /// A certificate handed to an attested machine in its payload (`--cert default`): a client
    /// certificate of the deployment that grants nothing and can never serve as a server.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Verifier => "verifier",
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }

    /// The URI SAN for this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            "verifier" => Ok(Role::Verifier),
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            _ => Err(TlsError::UnknownRole(s.to_owned())),
        }
    }
}

/// The role named by a certificate's `urn:keylime:role:` URI SAN; `None` when it has none.
///
/// This only reads the certificate: call it on a peer certificate that the TLS handshake has
/// already verified against the CA.
pub fn role_of(cert_der: &[u8]) -> Result<Option<Role>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::Certificate(format!("not a DER X.509 certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(format!("bad subjectAltName extension: {e}")))?;
    let mut found: Option<Role> = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else { continue };
        let Some(word) = uri.strip_prefix(ROLE_URI_PREFIX) else { continue };
        let role = word.parse()?;
        match found {
            Some(other) if other != role => return Err(TlsError::ConflictingRoles(other, role)),
            _ => found = Some(role),
        }
    }
    Ok(found)
}
