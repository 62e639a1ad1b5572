//! Just enough DER and PEM to find a public key and its key id in an X.509 certificate, a
//! SubjectPublicKeyInfo or a PKCS#1 RSAPublicKey: the inputs IMA signature keys come in.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_BOOLEAN: u8 = 0x01;

pub(crate) const OID_RSA_ENCRYPTION: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub(crate) const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];

/// One TLV: tag, contents, and what follows it.
pub(crate) fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags never occur in what we read
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(data)?;
    (t == tag).then_some((content, rest))
}

/// A SubjectPublicKeyInfo taken apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spki<'a> {
    pub(crate) algorithm: &'a [u8],
    /// The curve OID for EC keys.
    pub(crate) parameter: Option<&'a [u8]>,
    /// The BIT STRING contents without the unused-bits byte: a PKCS#1 RSAPublicKey or an EC point.
    pub(crate) key: &'a [u8],
}

pub(crate) fn parse_spki(der: &[u8]) -> Option<Spki<'_>> {
    let (spki, _) = expect(der, TAG_SEQUENCE)?;
    let (alg_id, rest) = expect(spki, TAG_SEQUENCE)?;
    let (algorithm, params) = expect(alg_id, TAG_OID)?;
    let parameter = match tlv(params) {
        Some((TAG_OID, oid, _)) => Some(oid),
        _ => None,
    };
    let (bits, _) = expect(rest, TAG_BIT_STRING)?;
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then_some(Spki { algorithm, parameter, key })
}

/// The SubjectPublicKeyInfo (as DER, tag included) and SubjectKeyIdentifier of a certificate.
pub(crate) fn parse_certificate(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (cert, _) = expect(der, TAG_SEQUENCE)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
    let mut rest = tbs;
    if let Some((0xa0, _, r)) = tlv(rest) {
        rest = r; // version
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.2;
    }
    let before = rest;
    let (_, _, after) = tlv(rest)?;
    let spki = &before[..before.len() - after.len()];
    expect(spki, TAG_SEQUENCE)?;
    let mut rest = after;
    let mut ski = None;
    while let Some((tag, content, r)) = tlv(rest) {
        rest = r;
        if tag == 0xa3 {
            ski = find_subject_key_id(content);
        }
    }
    Some((spki, ski))
}

fn find_subject_key_id(explicit: &[u8]) -> Option<&[u8]> {
    let (mut exts, _) = expect(explicit, TAG_SEQUENCE)?;
    while let Some((TAG_SEQUENCE, ext, rest)) = tlv(exts) {
        exts = rest;
        let (oid, mut fields) = expect(ext, TAG_OID)?;
        if oid != OID_SUBJECT_KEY_ID {
            continue;
        }
        if let Some((TAG_BOOLEAN, _, r)) = tlv(fields) {
            fields = r;
        }
        let (value, _) = expect(fields, TAG_OCTET_STRING)?;
        let (id, _) = expect(value, TAG_OCTET_STRING)?;
        return Some(id);
    }
    None
}

/// The blocks of a PEM text: (label, DER).
pub(crate) fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after = &rest[begin + 11..];
        let Some(label_end) = after.find("-----") else { break };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else { break };
        let body: String = body_start[..body_end].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = STANDARD.decode(body.as_bytes()) {
            out.push((label.to_owned(), der));
        }
        rest = &body_start[body_end + end_marker.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_rejects_overlong_lengths() {
        assert_eq!(tlv(&[0x30, 0x02, 1, 2]), Some((0x30, &[1u8, 2][..], &[][..])));
        assert_eq!(tlv(&[0x30, 0x81, 0x01, 7]), Some((0x30, &[7u8][..], &[][..])));
        assert!(tlv(&[0x30, 0x03, 1, 2]).is_none());
        assert!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(tlv(&[0x30]).is_none());
    }

    #[test]
    fn pem_blocks_skip_parameters_and_keep_order() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keylime/ima/keys/secp256k1.pem"
        ));
        let blocks = pem_blocks(text.as_bytes());
        let labels: Vec<_> = blocks.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["EC PARAMETERS", "EC PRIVATE KEY"]);
        assert_eq!(blocks[0].1, [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]);
    }
}
