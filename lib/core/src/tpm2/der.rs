//! The few DER encodings this crate writes: SubjectPublicKeyInfo for RSA and ECC public keys,
//! so a TPM public area can be compared byte for byte with the key in an EK certificate.

/// rsaEncryption, 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1, 1.2.840.10045.3.1.7
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1, 1.3.132.0.34
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// secp521r1, 1.3.132.0.35
pub(crate) const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn positive_integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
    let digits = &magnitude[first..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(TAG_INTEGER, &content)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &content)
}

/// `SubjectPublicKeyInfo` of an RSA key (`n`, `e` as big-endian magnitudes).
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut alg = tlv(TAG_OID, OID_RSA_ENCRYPTION);
    alg.extend_from_slice(&tlv(TAG_NULL, &[]));
    let mut key = positive_integer(n);
    key.extend_from_slice(&positive_integer(e));
    let mut spki = tlv(TAG_SEQUENCE, &alg);
    spki.extend_from_slice(&bit_string(&tlv(TAG_SEQUENCE, &key)));
    tlv(TAG_SEQUENCE, &spki)
}

/// `SubjectPublicKeyInfo` of an EC key from its curve OID and uncompressed point.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = tlv(TAG_OID, OID_EC_PUBLIC_KEY);
    alg.extend_from_slice(&tlv(TAG_OID, curve_oid));
    let mut spki = tlv(TAG_SEQUENCE, &alg);
    spki.extend_from_slice(&bit_string(point));
    tlv(TAG_SEQUENCE, &spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(positive_integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(positive_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(positive_integer(&[]), vec![2, 1, 0]);
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let t = tlv(TAG_SEQUENCE, &[0u8; 300]);
        assert_eq!(&t[..4], &[0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(TAG_SEQUENCE, &[0u8; 0x80])[..3], [0x30, 0x81, 0x80]);
    }
}
