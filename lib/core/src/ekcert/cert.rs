//! The parts of an X.509 certificate that EK chain validation needs, read with the lenient
//! DER reader. The signed TBS bytes are kept exactly as encoded.

use crate::date::days_from_civil;
use crate::der::{
    DerError, Reader, TAG_BIT_STRING, TAG_BOOLEAN, TAG_GENERALIZED_TIME, TAG_INTEGER,
    TAG_OCTET_STRING, TAG_OID, TAG_SEQUENCE, TAG_SET, TAG_UTC_TIME, Tlv, oid_to_string,
};
use crate::key::SubjectPublicKey;
use crate::oid;

/// The TCG TPM attributes of an EK certificate's subjectAltName (TCG EK Credential Profile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TpmAttributes {
    /// 2.23.133.2.1, e.g. `id:53544D20` (the TPM vendor id in hex).
    pub manufacturer: Option<String>,
    /// 2.23.133.2.2, e.g. `ST33HTPHAHB4`.
    pub model: Option<String>,
    /// 2.23.133.2.3, e.g. `id:00490004`.
    pub version: Option<String>,
}

/// A distinguished name: its raw DER, a display form, and a normalized form for matching.
#[derive(Debug, Clone)]
pub(crate) struct Name {
    pub display: String,
    /// Each RDN's (attribute OID, lowercased whitespace-collapsed value), sorted within the RDN.
    normalized: Vec<Vec<(Vec<u8>, String)>>,
    raw: Vec<u8>,
}

impl Name {
    /// Names match when their encodings are equal, or when they have the same attributes with
    /// the same values after case and whitespace folding (RFC 5280 §7.1, simplified), whatever
    /// their string types and the order of attributes inside a multi-valued RDN.
    pub(crate) fn matches(&self, other: &Name) -> bool {
        self.raw == other.raw || self.normalized == other.normalized
    }
}

/// The fields of one certificate that chain validation uses.
#[derive(Debug, Clone)]
pub(crate) struct Certificate {
    pub tbs: Vec<u8>,
    pub signature_algorithm: Vec<u8>,
    /// Parameters of the signature algorithm (for RSASSA-PSS).
    pub signature_params: Vec<u8>,
    pub signature: Vec<u8>,
    pub version: u64,
    pub issuer: Name,
    pub subject: Name,
    pub not_before: i64,
    pub not_after: i64,
    pub public_key: SubjectPublicKey,
    /// basicConstraints: (cA, pathLenConstraint).
    pub basic_constraints: Option<(bool, Option<u64>)>,
    /// keyUsage keyCertSign bit, when the extension is present.
    pub key_cert_sign: Option<bool>,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    pub tpm: TpmAttributes,
}

impl Certificate {
    pub(crate) fn parse(der: &[u8]) -> Result<Certificate, DerError> {
        let mut top = Reader::new(der);
        // Bytes after the outer SEQUENCE are ignored: some vendors pad EK certificates.
        let cert = top.read(TAG_SEQUENCE, "Certificate")?;
        let mut c = cert.contents();
        let tbs = c.read(TAG_SEQUENCE, "tbsCertificate")?;
        let outer_alg = c.read(TAG_SEQUENCE, "signatureAlgorithm")?;
        let (signature_algorithm, signature_params) = algorithm_identifier(&outer_alg)?;
        let sig = c.read(TAG_BIT_STRING, "signatureValue")?;
        let signature = sig.bit_string_bytes()?.to_vec();
        c.finish("Certificate")?;

        let mut t = tbs.contents();
        let version = match t.read_optional(0xa0, "version")? {
            Some(v) => {
                let mut vr = v.contents();
                let n = vr.read(TAG_INTEGER, "version")?.small_uint()?;
                vr.finish("version")?;
                n + 1
            }
            None => 1,
        };
        t.read(TAG_INTEGER, "serialNumber")?;
        let inner_alg = t.read(TAG_SEQUENCE, "tbsCertificate.signature")?;
        // The outer algorithm is not covered by the signature, so it must equal the signed one
        // exactly (RFC 5280 §4.1.1.2); otherwise unsigned parameters could be altered.
        if inner_alg.raw != outer_alg.raw {
            let (inner_oid, _) = algorithm_identifier(&inner_alg)?;
            return Err(DerError::new(
                outer_alg.offset,
                format!(
                    "signatureAlgorithm {} differs from the signed tbsCertificate.signature {}",
                    oid_to_string(&signature_algorithm),
                    oid_to_string(&inner_oid)
                ),
            ));
        }
        let issuer = parse_name(&t.read(TAG_SEQUENCE, "issuer")?)?;
        let validity = t.read(TAG_SEQUENCE, "validity")?;
        let mut v = validity.contents();
        let not_before = parse_time(&v.read_any()?, "notBefore")?;
        let not_after = parse_time(&v.read_any()?, "notAfter")?;
        v.finish("validity")?;
        let subject = parse_name(&t.read(TAG_SEQUENCE, "subject")?)?;
        let public_key =
            SubjectPublicKey::certificate_key(&t.read(TAG_SEQUENCE, "subjectPublicKeyInfo")?)?;
        let mut cert = Certificate {
            tbs: tbs.raw.to_vec(),
            signature_algorithm,
            signature_params,
            signature,
            version,
            issuer,
            subject,
            not_before,
            not_after,
            public_key,
            basic_constraints: None,
            key_cert_sign: None,
            subject_key_id: None,
            authority_key_id: None,
            tpm: TpmAttributes::default(),
        };
        // issuerUniqueID [1] and subjectUniqueID [2], primitive or constructed.
        for tag in [0x81, 0xa1, 0x82, 0xa2] {
            t.read_optional(tag, "uniqueID")?;
        }
        if let Some(exts) = t.read_optional(0xa3, "extensions")? {
            let mut outer = exts.contents();
            let list = outer.read(TAG_SEQUENCE, "extensions")?;
            outer.finish("extensions")?;
            let mut l = list.contents();
            while !l.is_empty() {
                cert.parse_extension(&l.read(TAG_SEQUENCE, "extension")?)?;
            }
        }
        t.finish("tbsCertificate")?;
        Ok(cert)
    }

    /// Unknown extensions are ignored even when marked critical: EK certificates carry
    /// vendor-specific critical extensions, and the chain's trust comes from the signatures.
    fn parse_extension(&mut self, ext: &Tlv<'_>) -> Result<(), DerError> {
        let mut e = ext.contents();
        let id = e.read(TAG_OID, "extnID")?;
        e.read_optional(TAG_BOOLEAN, "critical")?;
        let value = e.read(TAG_OCTET_STRING, "extnValue")?;
        e.finish("extension")?;
        let mut r = value.contents();
        match id.value {
            oid::BASIC_CONSTRAINTS => {
                let seq = r.read(TAG_SEQUENCE, "basicConstraints")?;
                let mut s = seq.contents();
                let ca = match s.read_optional(TAG_BOOLEAN, "cA")? {
                    Some(b) => b.boolean()?,
                    None => false,
                };
                let path_len = s
                    .read_optional(TAG_INTEGER, "pathLenConstraint")?
                    .map(|i| i.small_uint())
                    .transpose()?;
                self.basic_constraints = Some((ca, path_len));
            }
            oid::KEY_USAGE => {
                let bits = r.read(TAG_BIT_STRING, "keyUsage")?.bit_flags()?;
                // keyCertSign is bit 5.
                self.key_cert_sign = Some(bits.first().is_some_and(|b| b & 0x04 != 0));
            }
            oid::SUBJECT_KEY_ID => {
                self.subject_key_id =
                    Some(r.read(TAG_OCTET_STRING, "subjectKeyIdentifier")?.value.to_vec());
            }
            oid::AUTHORITY_KEY_ID => {
                let seq = r.read(TAG_SEQUENCE, "authorityKeyIdentifier")?;
                self.authority_key_id =
                    seq.contents().read_optional(0x80, "keyIdentifier")?.map(|k| k.value.to_vec());
            }
            oid::SUBJECT_ALT_NAME => {
                let names = r.read(TAG_SEQUENCE, "subjectAltName")?;
                let mut n = names.contents();
                while !n.is_empty() {
                    let general_name = n.read_any()?;
                    if general_name.tag == 0xa4 {
                        let dir = general_name.contents().read(TAG_SEQUENCE, "directoryName")?;
                        self.collect_tpm_attributes(&dir)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn collect_tpm_attributes(&mut self, name: &Tlv<'_>) -> Result<(), DerError> {
        for_each_attribute(name, |oid, value| {
            let slot = match oid {
                oid::TPM_MANUFACTURER => &mut self.tpm.manufacturer,
                oid::TPM_MODEL => &mut self.tpm.model,
                oid::TPM_VERSION => &mut self.tpm.version,
                _ => return Ok(()),
            };
            *slot = Some(decode_string(value)?);
            Ok(())
        })
    }
}

fn algorithm_identifier(alg: &Tlv<'_>) -> Result<(Vec<u8>, Vec<u8>), DerError> {
    let mut r = alg.contents();
    let id = r.read(TAG_OID, "algorithm")?;
    let params = if r.is_empty() { Vec::new() } else { r.read_any()?.raw.to_vec() };
    r.finish("AlgorithmIdentifier")?;
    Ok((id.value.to_vec(), params))
}

/// Calls `f(oid, value)` for every attribute of every RDN of a Name.
fn for_each_attribute<'a>(
    name: &Tlv<'a>,
    mut f: impl FnMut(&'a [u8], &Tlv<'a>) -> Result<(), DerError>,
) -> Result<(), DerError> {
    let mut rdns = name.contents();
    while !rdns.is_empty() {
        let rdn = rdns.read(TAG_SET, "RelativeDistinguishedName")?;
        let mut atvs = rdn.contents();
        while !atvs.is_empty() {
            let atv = atvs.read(TAG_SEQUENCE, "AttributeTypeAndValue")?;
            let mut a = atv.contents();
            let id = a.read(TAG_OID, "attribute type")?;
            let value = a.read_any()?;
            a.finish("AttributeTypeAndValue")?;
            f(id.value, &value)?;
        }
    }
    Ok(())
}

fn parse_name(name: &Tlv<'_>) -> Result<Name, DerError> {
    let mut display = Vec::new();
    let mut normalized = Vec::new();
    let mut rdns = name.contents();
    while !rdns.is_empty() {
        let rdn = rdns.read(TAG_SET, "RelativeDistinguishedName")?;
        let mut set = Vec::new();
        for_each_attribute(&rdn_as_name(&rdn), |id, value| {
            let text = decode_string(value)?;
            display.push(format!("{}={}", attribute_label(id), text));
            let folded = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            set.push((id.to_vec(), folded));
            Ok(())
        })?;
        set.sort();
        normalized.push(set);
    }
    let display = if display.is_empty() { "(empty name)".to_owned() } else { display.join(", ") };
    Ok(Name { display, normalized, raw: name.raw.to_vec() })
}

/// Wraps one RDN so `for_each_attribute` can walk it like a one-RDN Name.
fn rdn_as_name<'a>(rdn: &Tlv<'a>) -> Tlv<'a> {
    Tlv {
        tag: TAG_SEQUENCE,
        offset: rdn.offset,
        value_offset: rdn.offset,
        value: rdn.raw,
        raw: rdn.raw,
    }
}

fn attribute_label(id: &[u8]) -> String {
    match id {
        [0x55, 0x04, 0x03] => "CN".to_owned(),
        [0x55, 0x04, 0x05] => "serialNumber".to_owned(),
        [0x55, 0x04, 0x06] => "C".to_owned(),
        [0x55, 0x04, 0x07] => "L".to_owned(),
        [0x55, 0x04, 0x08] => "ST".to_owned(),
        [0x55, 0x04, 0x0a] => "O".to_owned(),
        [0x55, 0x04, 0x0b] => "OU".to_owned(),
        other => oid_to_string(other),
    }
}

/// Decodes a directory string of any common type; other types are shown as hex.
fn decode_string(value: &Tlv<'_>) -> Result<String, DerError> {
    Ok(match value.tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString.
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => String::from_utf8_lossy(value.value).into_owned(),
        // TeletexString: treated as Latin-1.
        0x14 => value.value.iter().map(|b| char::from(*b)).collect(),
        // BMPString (UCS-2).
        0x1e => {
            let units: Vec<u16> = value
                .value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => format!("#{}", hex::encode(value.raw)),
    })
}

/// Reads a UTCTime or GeneralizedTime as seconds since the Unix epoch. Both encodings are
/// accepted for any year, with or without seconds, with fractional seconds (ignored) and with a
/// `Z` or `+hhmm`/`-hhmm` suffix: vendors do not all follow RFC 5280 here.
fn parse_time(t: &Tlv<'_>, what: &str) -> Result<i64, DerError> {
    let bad = |reason: &str| DerError::new(t.offset, format!("{what}: {reason}"));
    let text = std::str::from_utf8(t.value).map_err(|_| bad("time is not ASCII"))?;
    let (digits, year) = match t.tag {
        TAG_UTC_TIME => {
            let yy = num(text, 0, 2).ok_or_else(|| bad("bad UTCTime year"))?;
            (&text[2.min(text.len())..], if yy >= 50 { 1900 + yy } else { 2000 + yy })
        }
        TAG_GENERALIZED_TIME => (
            &text[4.min(text.len())..],
            num(text, 0, 4).ok_or_else(|| bad("bad GeneralizedTime year"))?,
        ),
        other => {
            return Err(bad(&format!(
                "expected UTCTime or GeneralizedTime, found tag 0x{other:02x}"
            )));
        }
    };
    let field = |at: usize| num(digits, at, 2).ok_or_else(|| bad(&format!("bad time {text:?}")));
    let (month, day, hour, minute) = (field(0)?, field(2)?, field(4)?, field(6)?);
    let mut rest = &digits[8.min(digits.len())..];
    let second = match num(rest, 0, 2) {
        Some(s) => {
            rest = &rest[2..];
            s
        }
        None => 0,
    };
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" => 0,
        _ if rest.len() == 5 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h = num(rest, 1, 2).ok_or_else(|| bad("bad time zone"))?;
            let m = num(rest, 3, 2).ok_or_else(|| bad("bad time zone"))?;
            let secs = (h * 3600 + m * 60) as i64;
            if rest.starts_with('+') { secs } else { -secs }
        }
        _ => return Err(bad(&format!("bad time {text:?}"))),
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad(&format!("time out of range {text:?}")));
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    Ok(days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset)
}

fn num(s: &str, at: usize, len: usize) -> Option<u32> {
    let part = s.get(at..at + len)?;
    if part.bytes().all(|b| b.is_ascii_digit()) { part.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(tag: u8, s: &str) -> Result<i64, DerError> {
        let mut der = vec![tag, s.len() as u8];
        der.extend_from_slice(s.as_bytes());
        parse_time(&Reader::new(&der).read_any().expect("tlv"), "t")
    }

    #[test]
    fn parses_both_time_encodings() {
        assert_eq!(time(TAG_UTC_TIME, "180711000000Z").expect("utc"), 1_531_267_200);
        assert_eq!(time(TAG_UTC_TIME, "1807110000Z").expect("no seconds"), 1_531_267_200);
        assert_eq!(time(TAG_GENERALIZED_TIME, "20180711000000Z").expect("gen"), 1_531_267_200);
        assert_eq!(time(TAG_GENERALIZED_TIME, "20180711000000.5Z").expect("frac"), 1_531_267_200);
        assert_eq!(time(TAG_UTC_TIME, "180711020000+0200").expect("offset"), 1_531_267_200);
        assert_eq!(time(TAG_UTC_TIME, "500101000000Z").expect("1950"), -631_152_000);
        assert_eq!(
            crate::date::rfc3339(time(TAG_GENERALIZED_TIME, "99991231235959Z").expect("max"), None),
            "9999-12-31T23:59:59Z"
        );
        assert!(time(TAG_UTC_TIME, "181311000000Z").is_err());
        assert!(time(TAG_UTC_TIME, "18071100").is_err());
        assert!(time(TAG_INTEGER, "18071100").is_err());
    }
}
