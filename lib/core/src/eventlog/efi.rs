//! UEFI structures found in event data: GUIDs, UTF-16 names, `UEFI_VARIABLE_DATA`,
//! `EFI_SIGNATURE_LIST`, `EFI_LOAD_OPTION`, `UEFI_IMAGE_LOAD_EVENT` and device paths.
//!
//! Every parser here is total: malformed data yields `None` (the event is then shown raw), never
//! a panic.

use std::fmt::{self, Write as _};

use serde::{Serialize, Serializer};

use super::reader::Reader;

/// An `EFI_GUID` in its mixed-endian wire form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the canonical text form (`8be4df61-93ca-11d2-aa0d-00e098032b8c`).
    pub fn parse(text: &str) -> Option<Guid> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || text.len() != 36 {
            return None;
        }
        let mut raw = [0u8; 16];
        hex::decode_to_slice(&hex, &mut raw).ok()?;
        // The first three fields are little-endian on the wire.
        raw[0..4].reverse();
        raw[4..6].reverse();
        raw[6..8].reverse();
        Some(Guid(raw))
    }

    /// The same 16 bytes read as if the first three fields were big-endian: the form older
    /// tpm2-tools (and so Keylime reference states) printed.
    pub fn byte_swapped(self) -> Guid {
        let mut raw = self.0;
        raw[0..4].reverse();
        raw[4..6].reverse();
        raw[6..8].reverse();
        Guid(raw)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for byte in &b[10..] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    Guid([
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ])
}

/// `EFI_GLOBAL_VARIABLE`: SecureBoot, PK, KEK, Boot####, BootOrder.
pub(crate) const EFI_GLOBAL_VARIABLE: Guid =
    guid(0x8be4df61, 0x93ca, 0x11d2, [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: db, dbx.
pub(crate) const EFI_IMAGE_SECURITY_DATABASE: Guid =
    guid(0xd719b2cb, 0x3d3a, 0x4596, [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f]);
/// shim's vendor GUID (MokList, SbatLevel).
pub const SHIM_LOCK: Guid =
    guid(0x605dab50, 0xe046, 0x4300, [0xab, 0xb6, 0x3d, 0xd8, 0x10, 0xdd, 0x8b, 0x23]);
/// `EFI_CERT_X509_GUID`.
pub(crate) const EFI_CERT_X509: Guid =
    guid(0xa5c059a1, 0x94e4, 0x4aa7, [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72]);
/// `EFI_CERT_SHA256_GUID`.
pub(crate) const EFI_CERT_SHA256: Guid =
    guid(0xc1c41626, 0x504c, 0x4092, [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28]);

/// Decodes little-endian UTF-16 up to the first NUL (or the end), replacing invalid units.
pub(crate) fn utf16_to_string(raw: &[u8]) -> String {
    let units =
        raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0);
    char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

/// Text of an ASCII/UTF-8 string field, without trailing NULs.
pub fn text(raw: &[u8]) -> String {
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// True when `raw` (without trailing NULs) is printable text.
pub(crate) fn is_printable(raw: &[u8]) -> bool {
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    end > 0
        && raw[..end].iter().all(|b| (0x20..0x7f).contains(b) || matches!(b, b'\t' | b'\n' | b'\r'))
}

/// A borrowed `UEFI_VARIABLE_DATA`.
#[derive(Debug, Clone)]
pub(crate) struct UefiVariable<'a> {
    pub guid: Guid,
    pub name: String,
    pub data: &'a [u8],
}

impl<'a> UefiVariable<'a> {
    /// Parses the whole event data; trailing bytes after the variable data are refused.
    pub fn parse(raw: &'a [u8]) -> Option<UefiVariable<'a>> {
        let mut r = Reader::new(raw);
        let guid = Guid(r.array()?);
        let name_chars = usize::try_from(r.u64()?).ok()?;
        let data_len = usize::try_from(r.u64()?).ok()?;
        let name = utf16_to_string(r.bytes(name_chars.checked_mul(2)?)?);
        let data = r.bytes(data_len)?;
        r.is_empty().then_some(UefiVariable { guid, name, data })
    }
}

/// One entry of an `EFI_SIGNATURE_LIST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    /// The signature type (`EFI_CERT_X509_GUID`, `EFI_CERT_SHA256_GUID`, ...).
    #[serde(rename = "type")]
    pub kind: SignatureKind,
    pub owner: Guid,
    /// The certificate DER or the hash, lowercase hex.
    pub data: String,
}

/// The signature type of a list, by its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureKind {
    X509,
    Sha256,
    Other(Guid),
}

impl SignatureKind {
    fn from_guid(g: Guid) -> SignatureKind {
        if g == EFI_CERT_X509 {
            SignatureKind::X509
        } else if g == EFI_CERT_SHA256 {
            SignatureKind::Sha256
        } else {
            SignatureKind::Other(g)
        }
    }
}

impl fmt::Display for SignatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureKind::X509 => f.write_str("x509"),
            SignatureKind::Sha256 => f.write_str("sha256"),
            SignatureKind::Other(g) => write!(f, "{g}"),
        }
    }
}

impl Serialize for SignatureKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The most signatures accepted from one variable; far above any real db/dbx.
const MAX_SIGNATURES: usize = 100_000;

/// A borrowed entry of an `EFI_SIGNATURE_LIST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignatureRef<'a> {
    pub kind: SignatureKind,
    pub owner: Guid,
    /// The certificate DER or the hash.
    pub data: &'a [u8],
}

/// Parses a sequence of `EFI_SIGNATURE_LIST`s that must fill `raw` exactly, without copying.
pub(crate) fn signature_entries(raw: &[u8]) -> Option<Vec<SignatureRef<'_>>> {
    let mut r = Reader::new(raw);
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = SignatureKind::from_guid(Guid(r.array()?));
        let list_size = usize::try_from(r.u32()?).ok()?;
        let header_size = usize::try_from(r.u32()?).ok()?;
        let sig_size = usize::try_from(r.u32()?).ok()?;
        let body = list_size.checked_sub(28)?.checked_sub(header_size)?;
        r.bytes(header_size)?;
        if sig_size < 16 || body % sig_size != 0 || body > r.remaining() {
            return None;
        }
        for _ in 0..body / sig_size {
            if out.len() >= MAX_SIGNATURES {
                return None;
            }
            let owner = Guid(r.array()?);
            let data = r.bytes(sig_size - 16)?;
            out.push(SignatureRef { kind, owner, data });
        }
    }
    Some(out)
}

/// Parses a sequence of `EFI_SIGNATURE_LIST`s that must fill `raw` exactly, for display.
pub(crate) fn parse_signature_lists(raw: &[u8]) -> Option<Vec<Signature>> {
    let entries = signature_entries(raw)?;
    Some(
        entries
            .into_iter()
            .map(|e| Signature { kind: e.kind, owner: e.owner, data: hex::encode(e.data) })
            .collect(),
    )
}

/// A decoded `EFI_LOAD_OPTION` (a `Boot####` variable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadOption {
    pub attributes: u32,
    pub active: bool,
    pub description: String,
    pub device_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub optional_data: String,
}

pub(crate) fn parse_load_option(raw: &[u8]) -> Option<LoadOption> {
    let mut r = Reader::new(raw);
    let attributes = r.u32()?;
    let path_len = usize::from(r.u16()?);
    let rest = r.rest();
    let units = rest.chunks_exact(2).position(|c| c == [0, 0])?;
    let description = utf16_to_string(r.bytes(units * 2 + 2)?);
    let device_path = device_path_to_text(r.bytes(path_len)?);
    let optional_data = hex::encode(r.rest());
    Some(LoadOption {
        attributes,
        active: attributes & 1 == 1,
        description,
        device_path,
        optional_data,
    })
}

/// A decoded `UEFI_IMAGE_LOAD_EVENT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageLoad {
    pub image_location: u64,
    pub image_length: u64,
    pub link_time_address: u64,
    pub device_path: String,
}

pub(crate) fn parse_image_load(raw: &[u8]) -> Option<ImageLoad> {
    let mut r = Reader::new(raw);
    let image_location = r.u64()?;
    let image_length = r.u64()?;
    let link_time_address = r.u64()?;
    let path_len = r.len_u64()?;
    let device_path = device_path_to_text(r.bytes(path_len)?);
    Some(ImageLoad { image_location, image_length, link_time_address, device_path })
}

/// The most device-path nodes rendered; a longer path is cut with `...`.
const MAX_PATH_NODES: usize = 64;

/// Renders a device path in the UEFI text form where the node type is known
/// (`PciRoot(0x0)/Pci(0x1d,0x0)/NVMe(0x1,...)/HD(1,GPT,...)/\EFI\fedora\shimx64.efi`), and as
/// `Path(type,subtype,hex)` otherwise.
pub(crate) fn device_path_to_text(raw: &[u8]) -> String {
    let mut out = String::new();
    let mut r = Reader::new(raw);
    let mut nodes = 0;
    while !r.is_empty() {
        let Some((kind, sub, body)) = next_node(&mut r) else {
            push_node(&mut out, &format!("Invalid({})", hex::encode(r.rest())));
            break;
        };
        if kind == 0x7f {
            if sub == 0xff {
                break;
            }
            out.push(',');
            continue;
        }
        nodes += 1;
        if nodes > MAX_PATH_NODES {
            push_node(&mut out, "...");
            break;
        }
        push_node(&mut out, &node_to_text(kind, sub, body));
    }
    out
}

fn next_node<'a>(r: &mut Reader<'a>) -> Option<(u8, u8, &'a [u8])> {
    let kind = r.u8()?;
    let sub = r.u8()?;
    let len = usize::from(r.u16()?);
    let body = r.bytes(len.checked_sub(4)?)?;
    Some((kind, sub, body))
}

fn push_node(out: &mut String, node: &str) {
    if !out.is_empty() && !out.ends_with(',') {
        out.push('/');
    }
    out.push_str(node);
}

fn node_to_text(kind: u8, sub: u8, body: &[u8]) -> String {
    let mut r = Reader::new(body);
    let known = match (kind, sub) {
        (1, 1) => (|| Some(format!("Pci(0x{:x},0x{:x})", body.get(1)?, body.first()?)))(),
        (1, 3) => (|| {
            let mem_type = r.u32()?;
            let start = r.u64()?;
            let end = r.u64()?;
            Some(format!("MemoryMapped(0x{mem_type:x},0x{start:x},0x{end:x})"))
        })(),
        (1, 4) | (3, 10) | (4, 3) => (|| {
            let g = Guid(r.array()?);
            let label = match kind {
                1 => "VenHw",
                3 => "VenMsg",
                _ => "VenMedia",
            };
            if r.is_empty() {
                Some(format!("{label}({g})"))
            } else {
                Some(format!("{label}({g},{})", hex::encode(r.rest())))
            }
        })(),
        (2, 1) => (|| {
            let hid = r.u32()?;
            let uid = r.u32()?;
            match hid {
                0x0a03_41d0 => Some(format!("PciRoot(0x{uid:x})")),
                0x0a08_41d0 => Some(format!("PcieRoot(0x{uid:x})")),
                _ => Some(format!("Acpi(0x{hid:08x},0x{uid:x})")),
            }
        })(),
        (3, 1) => (|| Some(format!("Ata({},{},{})", r.u8()?, r.u8()?, r.u16()?)))(),
        (3, 2) => (|| Some(format!("Scsi(0x{:x},0x{:x})", r.u16()?, r.u16()?)))(),
        (3, 5) => (|| Some(format!("USB(0x{:x},0x{:x})", r.u8()?, r.u8()?)))(),
        (3, 11) => (|| {
            let mac = r.bytes(6)?;
            Some(format!("MAC({})", hex::encode(mac)))
        })(),
        (3, 12) => (|| {
            let local = r.array::<4>()?;
            let remote = r.array::<4>()?;
            Some(format!(
                "IPv4({}.{}.{}.{},{}.{}.{}.{})",
                remote[0], remote[1], remote[2], remote[3], local[0], local[1], local[2], local[3]
            ))
        })(),
        (3, 18) => (|| Some(format!("Sata(0x{:x},0x{:x},0x{:x})", r.u16()?, r.u16()?, r.u16()?)))(),
        (3, 23) => (|| {
            let nsid = r.u32()?;
            let eui = r.array::<8>()?;
            let eui: Vec<String> = eui.iter().map(|b| format!("{b:02X}")).collect();
            Some(format!("NVMe(0x{nsid:x},{})", eui.join("-")))
        })(),
        (3, 24) => Some(format!("Uri({})", text(body))),
        (4, 1) => (|| {
            let part = r.u32()?;
            let start = r.u64()?;
            let size = r.u64()?;
            let sig = r.array::<16>()?;
            let format = r.u8()?;
            let sig_type = r.u8()?;
            let sig_text = match sig_type {
                1 => format!("MBR,0x{:08x}", u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]])),
                2 => format!("GPT,{}", Guid(sig)),
                _ => format!("{format},{}", hex::encode(sig)),
            };
            Some(format!("HD({part},{sig_text},0x{start:x},0x{size:x})"))
        })(),
        (4, 2) => (|| Some(format!("CDROM(0x{:x})", r.u32()?)))(),
        (4, 4) => Some(utf16_to_string(body)),
        (4, 6) => (|| Some(format!("FvFile({})", Guid(r.array()?))))(),
        (4, 7) => (|| Some(format!("Fv({})", Guid(r.array()?))))(),
        (4, 8) => (|| {
            let _reserved = r.u32()?;
            Some(format!("Offset(0x{:x},0x{:x})", r.u64()?, r.u64()?))
        })(),
        (5, 1) => (|| {
            let dev_type = r.u16()?;
            let _flags = r.u16()?;
            Some(format!("BBS(0x{dev_type:x},{})", text(r.rest())))
        })(),
        _ => None,
    };
    known.unwrap_or_else(|| {
        let mut s = format!("Path({kind},{sub}");
        if !body.is_empty() {
            let _ = write!(s, ",{}", hex::encode(body));
        }
        s.push(')');
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip_and_swap() {
        assert_eq!(EFI_GLOBAL_VARIABLE.to_string(), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(Guid::parse("8be4df61-93ca-11d2-aa0d-00e098032b8c"), Some(EFI_GLOBAL_VARIABLE));
        assert_eq!(
            EFI_GLOBAL_VARIABLE.byte_swapped().to_string(),
            "61dfe48b-ca93-d211-aa0d-00e098032b8c"
        );
        assert_eq!(Guid::parse("nonsense"), None);
    }

    #[test]
    fn device_path_file_and_hd() {
        // HD(1,GPT,...) then a file path node then the end node.
        let mut raw = vec![4, 1, 42, 0];
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&0x800u64.to_le_bytes());
        raw.extend_from_slice(&0x1000u64.to_le_bytes());
        raw.extend_from_slice(&EFI_GLOBAL_VARIABLE.0);
        raw.extend_from_slice(&[2, 2]);
        let name: Vec<u8> =
            "\\EFI\\BOOT\\BOOTX64.EFI\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
        raw.extend_from_slice(&[4, 4]);
        raw.extend_from_slice(&u16::try_from(name.len() + 4).expect("small").to_le_bytes());
        raw.extend_from_slice(&name);
        raw.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        assert_eq!(
            device_path_to_text(&raw),
            "HD(1,GPT,8be4df61-93ca-11d2-aa0d-00e098032b8c,0x800,0x1000)/\\EFI\\BOOT\\BOOTX64.EFI"
        );
        // A node whose length runs past the end is reported, not a panic.
        assert!(device_path_to_text(&[4, 4, 200, 0, 1]).starts_with("Invalid("));
    }

    #[test]
    fn signature_list_bounds() {
        assert_eq!(parse_signature_lists(&[]), Some(vec![]));
        let mut raw = EFI_CERT_SHA256.0.to_vec();
        raw.extend_from_slice(&(28u32 + 48).to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&48u32.to_le_bytes());
        raw.extend_from_slice(&SHIM_LOCK.0);
        raw.extend_from_slice(&[0xab; 32]);
        let sigs = parse_signature_lists(&raw).expect("valid list");
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0].kind, SignatureKind::Sha256);
        assert_eq!(sigs[0].data, "ab".repeat(32));
        assert_eq!(parse_signature_lists(&raw[..raw.len() - 1]), None);
    }
}
