//! Decoding event data into operator-readable form, per event type.

use serde::Serialize;

use super::efi::{self, Guid, ImageLoad, LoadOption, Signature, UefiVariable};
use super::reader::Reader;
use super::{Event, EventType, SpecId};

/// An event's data, decoded according to its type. Unknown or malformed data is kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DecodedEvent {
    /// Event 0: the crypto-agile log header.
    SpecId(SpecId),
    /// `EV_NO_ACTION` `StartupLocality`: the locality PCR 0 starts from.
    StartupLocality { locality: u8 },
    /// Another `EV_NO_ACTION` event (not extended).
    NoAction {
        signature: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        data: String,
    },
    /// `EV_EFI_VARIABLE_*`: a UEFI variable.
    EfiVariable { variable_guid: Guid, name: String, data_size: usize, value: VariableValue },
    /// `EV_EFI_BOOT_SERVICES_APPLICATION` / `_DRIVER` / `EV_EFI_RUNTIME_SERVICES_DRIVER`.
    ImageLoad(ImageLoad),
    /// `EV_EFI_GPT_EVENT`: the GPT header and the partitions in use.
    Gpt { disk_guid: Guid, partitions: Vec<GptPartition> },
    /// `EV_SEPARATOR`: 0 normally, 1 or 0xffffffff when firmware reports an error.
    Separator { value: u32, error: bool },
    /// Text events: `EV_EFI_ACTION`, `EV_ACTION`, `EV_S_CRTM_VERSION`, printable `EV_POST_CODE`,
    /// `EV_PLATFORM_CONFIG_FLAGS` and others.
    Text { text: String },
    /// `EV_IPL`: grub's commands and kernel command line (PCR 8), files it read (PCR 9),
    /// shim's MOK variables (PCR 14).
    Ipl {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        grub_cmd: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kernel_cmdline: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB` and `EV_POST_CODE` with a blob.
    FirmwareBlob { base: u64, length: u64 },
    /// `EV_EFI_PLATFORM_FIRMWARE_BLOB2`.
    FirmwareBlob2 { description: String, base: u64, length: u64 },
    /// `EV_EFI_HANDOFF_TABLES` / `EV_EFI_HANDOFF_TABLES2`.
    HandoffTables {
        #[serde(skip_serializing_if = "String::is_empty")]
        description: String,
        tables: Vec<HandoffTable>,
    },
    /// Data this decoder does not understand, hex.
    Raw { data: String },
}

/// The decoded value of a UEFI variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VariableValue {
    /// `SecureBoot` (and other one-byte flags: `SetupMode`, `DeployedMode`, `AuditMode`).
    Boolean { enabled: bool, raw: u8 },
    /// PK, KEK, db, dbx, MokList...: `EFI_SIGNATURE_LIST`s.
    SignatureList { signatures: Vec<Signature> },
    /// An `EV_EFI_VARIABLE_AUTHORITY` entry: the certificate that authorised an image.
    Authority {
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<Guid>,
        data: String,
    },
    /// `BootOrder`: `Boot####` numbers, hex.
    BootOrder { order: Vec<String> },
    /// `Boot####`.
    LoadOption(LoadOption),
    /// Printable text (`SbatLevel`...).
    Text { text: String },
    /// Anything else, hex.
    Raw { data: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GptPartition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandoffTable {
    pub guid: Guid,
    pub address: u64,
}

/// The most GPT partitions or handoff tables decoded from one event.
const MAX_ENTRIES: usize = 1024;

pub(super) fn decode(event: &Event) -> DecodedEvent {
    decode_known(event).unwrap_or_else(|| raw(&event.data))
}

fn raw(data: &[u8]) -> DecodedEvent {
    DecodedEvent::Raw { data: hex::encode(data) }
}

fn decode_known(event: &Event) -> Option<DecodedEvent> {
    let data = event.data.as_slice();
    let t = event.event_type;
    if event.number == 0 {
        return super::spec_id_of(event).map(DecodedEvent::SpecId);
    }
    Some(match t {
        EventType::NO_ACTION => {
            if data.len() == 17 && data.starts_with(b"StartupLocality\0") {
                DecodedEvent::StartupLocality { locality: data[16] }
            } else {
                let sig_len = data.len().min(16);
                DecodedEvent::NoAction {
                    signature: efi::text(&data[..sig_len]),
                    data: hex::encode(&data[sig_len..]),
                }
            }
        }
        EventType::SEPARATOR => {
            let value = u32::from_le_bytes(data.try_into().ok()?);
            DecodedEvent::Separator { value, error: value != 0 }
        }
        _ if t.is_efi_variable() => decode_variable(t, data)?,
        _ if t.is_image_load() => DecodedEvent::ImageLoad(efi::parse_image_load(data)?),
        EventType::EFI_GPT_EVENT | EventType::EFI_GPT_EVENT2 => decode_gpt(data)?,
        EventType::IPL => decode_ipl(event.pcr, data),
        EventType::EFI_PLATFORM_FIRMWARE_BLOB => {
            let mut r = Reader::new(data);
            let out = DecodedEvent::FirmwareBlob { base: r.u64()?, length: r.u64()? };
            r.is_empty().then_some(out)?
        }
        EventType::POST_CODE if data.len() == 16 => {
            let mut r = Reader::new(data);
            DecodedEvent::FirmwareBlob { base: r.u64()?, length: r.u64()? }
        }
        EventType::EFI_PLATFORM_FIRMWARE_BLOB2 => {
            let mut r = Reader::new(data);
            let len = usize::from(r.u8()?);
            let description = efi::text(r.bytes(len)?);
            let out = DecodedEvent::FirmwareBlob2 { description, base: r.u64()?, length: r.u64()? };
            r.is_empty().then_some(out)?
        }
        EventType::EFI_HANDOFF_TABLES | EventType::EFI_HANDOFF_TABLES2 => {
            let mut r = Reader::new(data);
            let description = if t == EventType::EFI_HANDOFF_TABLES2 {
                let len = usize::from(r.u8()?);
                efi::text(r.bytes(len)?)
            } else {
                String::new()
            };
            let count = usize::try_from(r.u64()?).ok()?;
            if count > MAX_ENTRIES || count.checked_mul(24)? != r.remaining() {
                return None;
            }
            let mut tables = Vec::with_capacity(count);
            for _ in 0..count {
                tables.push(HandoffTable { guid: Guid(r.array()?), address: r.u64()? });
            }
            DecodedEvent::HandoffTables { description, tables }
        }
        EventType::S_CRTM_VERSION => DecodedEvent::Text { text: text_or_utf16(data)? },
        _ if efi::is_printable(data) => DecodedEvent::Text { text: efi::text(data) },
        _ => return None,
    })
}

/// ASCII text, or UTF-16LE text (how EDK2 records the S-CRTM version).
fn text_or_utf16(data: &[u8]) -> Option<String> {
    if efi::is_printable(data) {
        return Some(efi::text(data));
    }
    if data.len().is_multiple_of(2) && data.len() >= 2 {
        let s = efi::utf16_to_string(data);
        if !s.is_empty() && s.chars().all(|c| !c.is_control()) {
            return Some(s);
        }
    }
    None
}

fn decode_variable(t: EventType, data: &[u8]) -> Option<DecodedEvent> {
    let var = UefiVariable::parse(data)?;
    let value = variable_value(t, &var);
    Some(DecodedEvent::EfiVariable {
        variable_guid: var.guid,
        name: var.name,
        data_size: var.data.len(),
        value,
    })
}

fn variable_value(t: EventType, var: &UefiVariable<'_>) -> VariableValue {
    let d = var.data;
    let name = var.name.as_str();
    if t == EventType::EFI_VARIABLE_AUTHORITY {
        if d.starts_with(&[0x30, 0x82]) {
            return VariableValue::Authority { owner: None, data: hex::encode(d) };
        }
        if d.len() > 16 && d[16..].starts_with(&[0x30, 0x82]) {
            let owner = d[..16].try_into().ok().map(Guid);
            return VariableValue::Authority { owner, data: hex::encode(&d[16..]) };
        }
    }
    if d.len() == 1 && matches!(name, "SecureBoot" | "SetupMode" | "AuditMode" | "DeployedMode") {
        return VariableValue::Boolean { enabled: d[0] == 1, raw: d[0] };
    }
    if name == "BootOrder" && d.len().is_multiple_of(2) {
        let order = d
            .chunks_exact(2)
            .map(|c| format!("{:04X}", u16::from_le_bytes([c[0], c[1]])))
            .collect();
        return VariableValue::BootOrder { order };
    }
    if is_boot_option_name(name)
        && let Some(option) = efi::parse_load_option(d)
    {
        return VariableValue::LoadOption(option);
    }
    if !d.is_empty()
        && let Some(signatures) = efi::parse_signature_lists(d)
    {
        return VariableValue::SignatureList { signatures };
    }
    if efi::is_printable(d) {
        return VariableValue::Text { text: efi::text(d) };
    }
    VariableValue::Raw { data: hex::encode(d) }
}

fn is_boot_option_name(name: &str) -> bool {
    name.len() == 8 && name.starts_with("Boot") && name[4..].chars().all(|c| c.is_ascii_hexdigit())
}

fn decode_gpt(data: &[u8]) -> Option<DecodedEvent> {
    let mut r = Reader::new(data);
    if r.bytes(8)? != b"EFI PART" {
        return None;
    }
    let _revision = r.u32()?;
    let header_size = usize::try_from(r.u32()?).ok()?;
    // HeaderCRC32, Reserved, MyLBA, AlternateLBA, FirstUsableLBA, LastUsableLBA.
    r.bytes(4 + 4 + 8 * 4)?;
    let disk_guid = Guid(r.array()?);
    let _entries_lba = r.u64()?;
    let _entries_in_table = r.u32()?;
    let entry_size = usize::try_from(r.u32()?).ok()?;
    let _entries_crc = r.u32()?;
    r.bytes(header_size.checked_sub(92)?)?;
    let count = usize::try_from(r.u64()?).ok()?;
    if count > MAX_ENTRIES || entry_size < 128 || count.checked_mul(entry_size)? != r.remaining() {
        return None;
    }
    let mut partitions = Vec::with_capacity(count);
    for _ in 0..count {
        let mut e = Reader::new(r.bytes(entry_size)?);
        partitions.push(GptPartition {
            type_guid: Guid(e.array()?),
            unique_guid: Guid(e.array()?),
            first_lba: e.u64()?,
            last_lba: e.u64()?,
            attributes: e.u64()?,
            name: efi::utf16_to_string(e.bytes(72)?),
        });
    }
    Some(DecodedEvent::Gpt { disk_guid, partitions })
}

fn decode_ipl(pcr: u32, data: &[u8]) -> DecodedEvent {
    let text = efi::text(data);
    let mut out =
        DecodedEvent::Ipl { text: text.clone(), grub_cmd: None, kernel_cmdline: None, file: None };
    if let DecodedEvent::Ipl { grub_cmd, kernel_cmdline, file, .. } = &mut out {
        if let Some((prefix, rest)) = super::ipl_text(data) {
            let rest = String::from_utf8_lossy(rest).into_owned();
            match prefix {
                "grub_cmd: " => *grub_cmd = Some(rest),
                "kernel_cmdline: " => *kernel_cmdline = Some(rest),
                _ => {}
            }
        } else if pcr == 9 {
            *file = Some(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::Coverage;

    fn event(event_type: EventType, pcr: u32, data: &[u8]) -> Event {
        Event {
            number: 1,
            offset: 0,
            pcr,
            event_type,
            digests: vec![],
            other_digests: vec![],
            data: data.to_vec(),
            coverage: Coverage::None,
            digest_verified: None,
        }
    }

    #[test]
    fn ipl_kinds() {
        let e = event(EventType::IPL, 8, b"kernel_cmdline: /vmlinuz ro quiet\0");
        match e.decode() {
            DecodedEvent::Ipl { kernel_cmdline, .. } => {
                assert_eq!(kernel_cmdline.as_deref(), Some("/vmlinuz ro quiet"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = event(EventType::IPL, 9, b"(hd0,gpt2)/vmlinuz\0");
        assert!(
            matches!(e.decode(), DecodedEvent::Ipl { file: Some(f), .. } if f == "(hd0,gpt2)/vmlinuz")
        );
    }

    #[test]
    fn unknown_binary_kept_raw() {
        let e = event(EventType(0x1234), 3, &[0, 1, 2, 0xff]);
        assert_eq!(e.decode(), DecodedEvent::Raw { data: "000102ff".into() });
        let e = event(EventType::SEPARATOR, 3, &[0, 1]);
        assert_eq!(e.decode(), DecodedEvent::Raw { data: "0001".into() });
    }
}
