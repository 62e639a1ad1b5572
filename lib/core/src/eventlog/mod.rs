//! TCG PC Client crypto-agile UEFI event logs (`binary_bios_measurements`).
//!
//! This module owns parsing a log (raw binary, or base64 of one), replaying it into PCR values
//! per bank exactly as the TCG PC Client Platform Firmware Profile specifies, checking which
//! event data is covered by its digest, and decoding event data (EFI variables, signature
//! databases, boot options, image loads with device paths, GPT headers, grub's measurements)
//! into something an operator can read and the measured-boot policy ([`crate::policy::mb`]) can
//! check.
//!
//! Replay rules: every bank starts at zero, except that an `EV_NO_ACTION` event carrying
//! `StartupLocality\0` sets the last byte of PCR 0's initial value to the locality;
//! `EV_NO_ACTION` events are never extended. Event 0 is the SHA-1-format Spec ID event, whose
//! digest size table drives the parsing of every later `TCG_PCR_EVENT2`.
//!
//! What an event's digest proves: for most configuration events (EFI variables, separators,
//! actions, GPT, grub command lines) the digest is a hash of (part of) the event data, so the
//! data can be checked ([`Event::digest_verified`]); for image loads, firmware blobs and
//! files read by grub the digest is of something else and the data is only a description.
//! Data that no digest covers must never decide a verdict on its own.

mod decode;
pub mod efi;
mod reader;
mod types;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::alg::{Digest, HashAlg};
use reader::Reader;

pub use decode::{DecodedEvent, GptPartition, HandoffTable, VariableValue};
pub use types::EventType;

/// Largest log accepted (real logs are tens of kilobytes).
pub(crate) const MAX_LOG_SIZE: usize = 64 * 1024 * 1024;
/// Most events accepted in one log.
pub(crate) const MAX_EVENTS: usize = 1 << 18;
/// Most algorithms a Spec ID event may list.
pub(crate) const MAX_ALGORITHMS: usize = 16;
/// Number of PCRs of a PC Client TPM.
pub(crate) const PCR_COUNT: u32 = 24;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Why a log could not be read. A log that reads but does not satisfy a policy is a verdict,
/// not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventLogError {
    #[error("event log is empty (0 bytes)")]
    Empty,
    #[error("event log is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("event log is neither a binary TCG log nor valid base64: {0}")]
    Base64(String),
    #[error("event log{}: event {event} at byte offset {offset}: {problem}", if *.base64 { " (after base64 decoding)" } else { "" })]
    Malformed {
        /// Event number (0 is the Spec ID event).
        event: u32,
        /// Byte offset in the binary log where the problem was found.
        offset: usize,
        problem: String,
        base64: bool,
    },
}

/// One algorithm entry of the Spec ID event's digest size table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecAlgorithm {
    pub alg_id: u16,
    /// `None` for an algorithm this implementation cannot hash (its bank is not replayed).
    pub alg: Option<HashAlg>,
    pub digest_size: u16,
}

/// The content of the `Spec ID Event03` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecId {
    pub platform_class: u32,
    /// `major.minor.errata`.
    pub spec_version: String,
    pub uintn_size: u8,
    pub algorithms: Vec<SpecAlgorithm>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_info: String,
}

/// Which part of an event's data its digest is a hash of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// The digest is not a hash of the event data (image loads, firmware blobs, files read by
    /// grub, `EV_NO_ACTION`): the data only describes what was measured.
    None,
    /// The whole event data.
    EventData,
    /// Only `VariableData` of a `UEFI_VARIABLE_DATA` (how firmware measures `Boot####`): the
    /// variable's name and GUID are not covered.
    VariableData,
    /// grub's command text after the `grub_cmd: ` / `kernel_cmdline: ` prefix, without the NUL:
    /// the prefix itself is not covered.
    IplText,
}

/// One `TCG_PCR_EVENT2` (or, for event 0, the Spec ID header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log; 0 is the Spec ID event.
    pub number: u32,
    /// Byte offset of the event's first byte in the binary log.
    pub offset: usize,
    pub pcr: u32,
    pub event_type: EventType,
    /// Digests of the banks this implementation knows, in log order.
    pub digests: Vec<Digest>,
    /// Digests of algorithms this implementation cannot hash: `(TPM_ALG_ID, bytes)`.
    pub other_digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
    /// What part of `data` the digest covers (when it could be checked, or is expected to).
    pub coverage: Coverage,
    /// `Some(true)` when every digest of the processed banks ([`EventLog::processed_banks`])
    /// equals the hash of the covered data,
    /// `Some(false)` when data that should hash to the digest does not, `None` when the digest
    /// is not a hash of the data.
    pub digest_verified: Option<bool>,
}

impl Event {
    /// The digest of bank `alg`, if the event has one.
    pub fn digest(&self, alg: HashAlg) -> Option<&Digest> {
        self.digests.iter().find(|d| d.alg() == alg)
    }

    /// True when the event's data is proven by its digest (as `coverage` describes).
    pub fn data_trusted(&self) -> bool {
        self.digest_verified == Some(true)
    }

    /// Whether replay extends this event into its PCR.
    pub fn is_extended(&self) -> bool {
        self.number != 0 && self.event_type != EventType::NO_ACTION
    }

    /// The decoded event data.
    pub fn decode(&self) -> DecodedEvent {
        decode::decode(self)
    }
}

/// Replayed PCR values per bank.
pub(crate) type PcrBanks = BTreeMap<HashAlg, BTreeMap<u32, Digest>>;

/// A parsed, replayed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub spec_id: SpecId,
    /// All events, the Spec ID event first.
    pub events: Vec<Event>,
    /// The locality from a `StartupLocality` event, if the log has one.
    pub startup_locality: Option<u8>,
    /// Whether the input was base64 of the binary log.
    pub from_base64: bool,
    pcrs: PcrBanks,
    /// The banks replayed and checked against event data.
    processed_banks: Vec<HashAlg>,
}

impl EventLog {
    /// Parses a log given as raw binary or as base64 of it (detected), replays it, and checks
    /// event data against the digests of every bank.
    pub fn parse(input: &[u8]) -> Result<EventLog, EventLogError> {
        Self::parse_verifying(input, None)
    }

    /// Like [`EventLog::parse`], but replays and checks event data only in `banks` (those the
    /// log carries): the appraisal path passes the quoted and the policy bank, which is all
    /// that ties data to a quote, and skips hashing the others.
    pub fn parse_for_banks(input: &[u8], banks: &[HashAlg]) -> Result<EventLog, EventLogError> {
        Self::parse_verifying(input, Some(banks))
    }

    fn parse_verifying(
        input: &[u8],
        verify: Option<&[HashAlg]>,
    ) -> Result<EventLog, EventLogError> {
        if input.is_empty() {
            return Err(EventLogError::Empty);
        }
        if input.len() > MAX_LOG_SIZE {
            return Err(EventLogError::TooLarge { size: input.len(), limit: MAX_LOG_SIZE });
        }
        if looks_binary(input) {
            return parse_binary(input, false, verify);
        }
        let text: Vec<u8> = input.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        if text.is_empty() {
            return Err(EventLogError::Base64("only whitespace".into()));
        }
        if !text.iter().all(|b| is_base64_char(*b)) {
            // Not base64: report it as the binary log it then must be.
            return parse_binary(input, false, verify);
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|e| EventLogError::Base64(e.to_string()))?;
        if raw.is_empty() {
            return Err(EventLogError::Empty);
        }
        parse_binary(&raw, true, verify)
    }

    /// The digest banks the log carries and this implementation can replay.
    pub fn banks(&self) -> Vec<HashAlg> {
        self.spec_id.algorithms.iter().filter_map(|a| a.alg).collect()
    }

    /// The banks that were replayed and whose digests [`Event::digest_verified`] was checked
    /// against: all known banks after [`EventLog::parse`].
    pub fn processed_banks(&self) -> &[HashAlg] {
        &self.processed_banks
    }

    /// This log with `banks` (those it carries) replayed and checked as well.
    pub fn with_banks(&self, banks: &[HashAlg]) -> EventLog {
        let mut log = self.clone();
        for b in banks {
            if self.banks().contains(b) && !log.processed_banks.contains(b) {
                log.processed_banks.push(*b);
            }
        }
        for e in &mut log.events[1..] {
            check_coverage(e, &log.processed_banks);
        }
        log.pcrs = replay(&log.events, &log.processed_banks, log.startup_locality);
        log
    }

    /// Replayed PCR values for every processed bank (only PCRs that had an event extended,
    /// plus PCR 0 when a StartupLocality event set it).
    pub fn pcrs(&self) -> &PcrBanks {
        &self.pcrs
    }

    /// The replayed value of one PCR in one bank.
    pub fn pcr(&self, alg: HashAlg, pcr: u32) -> Option<&Digest> {
        self.pcrs.get(&alg)?.get(&pcr)
    }

    /// Events after the Spec ID header.
    pub fn measurements(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().skip(1)
    }
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// A binary crypto-agile log starts with PCR 0, EV_NO_ACTION (little-endian).
fn looks_binary(input: &[u8]) -> bool {
    input.starts_with(&[0, 0, 0, 0, 3, 0, 0, 0])
}

struct Ctx {
    base64: bool,
}

impl Ctx {
    fn err(&self, event: u32, offset: usize, problem: impl Into<String>) -> EventLogError {
        EventLogError::Malformed { event, offset, problem: problem.into(), base64: self.base64 }
    }
}

fn parse_binary(
    raw: &[u8],
    base64: bool,
    verify: Option<&[HashAlg]>,
) -> Result<EventLog, EventLogError> {
    let ctx = Ctx { base64 };
    let mut r = Reader::new(raw);
    let (spec_id, header) = parse_spec_id(&mut r, &ctx)?;
    let sizes: Vec<(u16, usize)> =
        spec_id.algorithms.iter().map(|a| (a.alg_id, usize::from(a.digest_size))).collect();
    let mut events = vec![header];
    let mut startup_locality = None;
    while !r.is_empty() {
        let number = u32::try_from(events.len()).unwrap_or(u32::MAX);
        if events.len() >= MAX_EVENTS {
            return Err(ctx.err(number, r.pos(), format!("more than {MAX_EVENTS} events")));
        }
        let event = parse_event2(&mut r, &ctx, number, &sizes)?;
        if event.event_type == EventType::NO_ACTION
            && event.data.len() == 17
            && event.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
        {
            if event.pcr != 0 {
                return Err(ctx.err(
                    number,
                    event.offset,
                    format!("StartupLocality event in PCR {} (must be PCR 0)", event.pcr),
                ));
            }
            if startup_locality.is_some() {
                return Err(ctx.err(number, event.offset, "second StartupLocality event"));
            }
            if events.iter().skip(1).any(|e: &Event| e.pcr == 0 && e.is_extended()) {
                return Err(ctx.err(
                    number,
                    event.offset,
                    "StartupLocality event after PCR 0 was already extended",
                ));
            }
            startup_locality = Some(event.data[16]);
        }
        events.push(event);
    }
    let processed_banks: Vec<HashAlg> = spec_id
        .algorithms
        .iter()
        .filter_map(|a| a.alg)
        .filter(|a| verify.is_none_or(|v| v.contains(a)))
        .collect();
    for e in &mut events[1..] {
        check_coverage(e, &processed_banks);
    }
    let pcrs = replay(&events, &processed_banks, startup_locality);
    Ok(EventLog { spec_id, events, startup_locality, from_base64: base64, pcrs, processed_banks })
}

fn parse_spec_id(r: &mut Reader<'_>, ctx: &Ctx) -> Result<(SpecId, Event), EventLogError> {
    let short = |r: &Reader<'_>, what: &str| {
        ctx.err(0, r.pos(), format!("log ends inside the Spec ID event ({what})"))
    };
    let pcr = r.u32().ok_or_else(|| short(r, "PCR index"))?;
    let type_pos = r.pos();
    let event_type = EventType(r.u32().ok_or_else(|| short(r, "event type"))?);
    if event_type != EventType::NO_ACTION {
        return Err(ctx.err(
            0,
            type_pos,
            format!(
                "first event has type {event_type} (0x{:08x}), expected EV_NO_ACTION carrying \"Spec ID Event03\": not a TCG crypto-agile event log",
                event_type.0
            ),
        ));
    }
    if pcr != 0 {
        return Err(ctx.err(0, 0, format!("Spec ID event in PCR {pcr}, expected PCR 0")));
    }
    let sha1 = r.array::<20>().ok_or_else(|| short(r, "SHA-1 digest"))?;
    let size_pos = r.pos();
    let size = r.u32().ok_or_else(|| short(r, "event size"))? as usize;
    let data_pos = r.pos();
    let data = r.bytes(size).ok_or_else(|| {
        ctx.err(
            0,
            size_pos,
            format!("Spec ID event size {size} exceeds the {} bytes left", r.remaining()),
        )
    })?;
    let mut d = Reader::new(data);
    let at = |d: &Reader<'_>| data_pos + d.pos();
    let sig = d.array::<16>();
    if sig.as_ref() != Some(SPEC_ID_SIGNATURE) {
        let what = if data.starts_with(b"Spec ID Event00") {
            "Spec ID Event00 (a TCG 1.2 SHA-1 log): only crypto-agile logs are supported"
        } else {
            "missing \"Spec ID Event03\" signature: not a TCG crypto-agile event log"
        };
        return Err(ctx.err(0, data_pos, what));
    }
    let hdr_short = |d: &Reader<'_>| ctx.err(0, at(d), "Spec ID event data too short");
    let platform_class = d.u32().ok_or_else(|| hdr_short(&d))?;
    let minor = d.u8().ok_or_else(|| hdr_short(&d))?;
    let major = d.u8().ok_or_else(|| hdr_short(&d))?;
    let errata = d.u8().ok_or_else(|| hdr_short(&d))?;
    let uintn_size = d.u8().ok_or_else(|| hdr_short(&d))?;
    let count_pos = at(&d);
    let count = d.u32().ok_or_else(|| hdr_short(&d))? as usize;
    if count == 0 || count > MAX_ALGORITHMS {
        return Err(ctx.err(
            0,
            count_pos,
            format!(
                "Spec ID event lists {count} digest algorithms (expected 1 to {MAX_ALGORITHMS})"
            ),
        ));
    }
    let mut algorithms: Vec<SpecAlgorithm> = Vec::with_capacity(count);
    for _ in 0..count {
        let pos = at(&d);
        let alg_id = d.u16().ok_or_else(|| hdr_short(&d))?;
        let digest_size = d.u16().ok_or_else(|| hdr_short(&d))?;
        let alg = HashAlg::from_tpm_alg_id(alg_id);
        if digest_size == 0 || usize::from(digest_size) > crate::alg::MAX_DIGEST_LEN {
            return Err(ctx.err(
                0,
                pos,
                format!("algorithm 0x{alg_id:04x} has digest size {digest_size}"),
            ));
        }
        if let Some(a) = alg
            && a.len() != usize::from(digest_size)
        {
            return Err(ctx.err(
                0,
                pos,
                format!("{a} digest size given as {digest_size}, must be {}", a.len()),
            ));
        }
        if algorithms.iter().any(|x| x.alg_id == alg_id) {
            return Err(ctx.err(0, pos, format!("algorithm 0x{alg_id:04x} listed twice")));
        }
        algorithms.push(SpecAlgorithm { alg_id, alg, digest_size });
    }
    let vendor_size = usize::from(d.u8().ok_or_else(|| hdr_short(&d))?);
    let vendor = d.bytes(vendor_size).ok_or_else(|| hdr_short(&d))?;
    let spec_id = SpecId {
        platform_class,
        spec_version: format!("{major}.{minor}.{errata}"),
        uintn_size,
        algorithms,
        vendor_info: if efi::is_printable(vendor) {
            efi::text(vendor)
        } else {
            hex::encode(vendor)
        },
    };
    let digests =
        vec![Digest::from_bytes(HashAlg::Sha1, &sha1).unwrap_or_else(|| HashAlg::Sha1.zero())];
    let header = Event {
        number: 0,
        offset: 0,
        pcr,
        event_type,
        digests,
        other_digests: Vec::new(),
        data: data.to_vec(),
        coverage: Coverage::None,
        digest_verified: None,
    };
    Ok((spec_id, header))
}

/// Re-reads the Spec ID content of event 0 (for display).
fn spec_id_of(event: &Event) -> Option<SpecId> {
    let mut raw = Vec::with_capacity(32 + event.data.len());
    raw.extend_from_slice(&event.pcr.to_le_bytes());
    raw.extend_from_slice(&event.event_type.0.to_le_bytes());
    raw.extend_from_slice(event.digests.first()?.as_bytes());
    raw.extend_from_slice(&u32::try_from(event.data.len()).ok()?.to_le_bytes());
    raw.extend_from_slice(&event.data);
    parse_spec_id(&mut Reader::new(&raw), &Ctx { base64: false }).ok().map(|(spec, _)| spec)
}

fn parse_event2(
    r: &mut Reader<'_>,
    ctx: &Ctx,
    number: u32,
    sizes: &[(u16, usize)],
) -> Result<Event, EventLogError> {
    let offset = r.pos();
    let short = |r: &Reader<'_>, what: &str| {
        ctx.err(
            number,
            r.pos(),
            format!("log ends inside the event ({what}; {} bytes left)", r.remaining()),
        )
    };
    let pcr = r.u32().ok_or_else(|| short(r, "PCR index"))?;
    if pcr >= PCR_COUNT {
        return Err(ctx.err(
            number,
            offset,
            format!("PCR index {pcr} out of range (0-{})", PCR_COUNT - 1),
        ));
    }
    let event_type = EventType(r.u32().ok_or_else(|| short(r, "event type"))?);
    let count_pos = r.pos();
    let count = r.u32().ok_or_else(|| short(r, "digest count"))? as usize;
    // Every event carries one digest per bank the Spec ID event announces; a missing one would
    // silently leave that bank's replay short.
    if count != sizes.len() {
        return Err(ctx.err(
            number,
            count_pos,
            format!(
                "digest count {count} differs from the {} algorithms of the Spec ID event",
                sizes.len()
            ),
        ));
    }
    let mut digests = Vec::with_capacity(count);
    let mut other_digests = Vec::new();
    let mut seen: Vec<u16> = Vec::with_capacity(count);
    for _ in 0..count {
        let pos = r.pos();
        let alg_id = r.u16().ok_or_else(|| short(r, "digest algorithm"))?;
        let Some(&(_, size)) = sizes.iter().find(|(id, _)| *id == alg_id) else {
            return Err(ctx.err(
                number,
                pos,
                format!("digest algorithm 0x{alg_id:04x} is not in the Spec ID event"),
            ));
        };
        if seen.contains(&alg_id) {
            return Err(ctx.err(
                number,
                pos,
                format!("digest algorithm 0x{alg_id:04x} appears twice"),
            ));
        }
        seen.push(alg_id);
        let raw = r.bytes(size).ok_or_else(|| short(r, "digest"))?;
        match HashAlg::from_tpm_alg_id(alg_id).and_then(|a| Digest::from_bytes(a, raw)) {
            Some(d) => digests.push(d),
            None => other_digests.push((alg_id, raw.to_vec())),
        }
    }
    let size_pos = r.pos();
    let size = r.u32().ok_or_else(|| short(r, "event size"))? as usize;
    let data = r.bytes(size).ok_or_else(|| {
        ctx.err(
            number,
            size_pos,
            format!("event size {size} exceeds the {} bytes left", r.remaining()),
        )
    })?;
    let event = Event {
        number,
        offset,
        pcr,
        event_type,
        digests,
        other_digests,
        data: data.to_vec(),
        coverage: Coverage::None,
        digest_verified: None,
    };
    Ok(event)
}

/// The candidate parts of an event's data its digest may be a hash of, most expected first.
fn coverage_candidates(event: &Event) -> &'static [Coverage] {
    let t = event.event_type;
    if t == EventType::EFI_VARIABLE_BOOT || t == EventType::EFI_VARIABLE_BOOT2 {
        &[Coverage::VariableData, Coverage::EventData]
    } else if t == EventType::EFI_VARIABLE_DRIVER_CONFIG
        || t == EventType::EFI_VARIABLE_AUTHORITY
        || t == EventType::SEPARATOR
        || t == EventType::EFI_ACTION
        || t == EventType::ACTION
        || t == EventType::S_CRTM_VERSION
        || t == EventType::EFI_GPT_EVENT
        || t == EventType::EFI_GPT_EVENT2
        || t == EventType::OMIT_BOOT_DEVICE_EVENTS
    {
        &[Coverage::EventData]
    } else if t == EventType::IPL && event.pcr == 8 && ipl_text(&event.data).is_some() {
        &[Coverage::IplText]
    } else {
        &[]
    }
}

/// grub's PCR 8 strings: `(prefix, text)` where the digest covers `text`.
pub(crate) fn ipl_text(data: &[u8]) -> Option<(&'static str, &[u8])> {
    for prefix in ["grub_cmd: ", "kernel_cmdline: ", "module_cmdline: "] {
        if let Some(rest) = data.strip_prefix(prefix.as_bytes()) {
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            return Some((prefix, &rest[..end]));
        }
    }
    None
}

pub(crate) fn covered_bytes(event: &Event, coverage: Coverage) -> Option<&[u8]> {
    match coverage {
        Coverage::None => None,
        Coverage::EventData => Some(&event.data),
        Coverage::VariableData => efi::UefiVariable::parse(&event.data).map(|v| v.data),
        Coverage::IplText => ipl_text(&event.data).map(|(_, t)| t),
    }
}

/// Sets `coverage` and `digest_verified` from the digests of `banks`.
fn check_coverage(event: &mut Event, banks: &[HashAlg]) {
    event.coverage = Coverage::None;
    event.digest_verified = None;
    let candidates = coverage_candidates(event);
    let Some(&first) = candidates.first() else {
        return;
    };
    let checked = || event.digests.iter().filter(|d| banks.contains(&d.alg()));
    if checked().next().is_none() {
        return;
    }
    for &coverage in candidates {
        if let Some(bytes) = covered_bytes(event, coverage)
            && checked().all(|d| d.alg().digest(bytes) == *d)
        {
            event.coverage = coverage;
            event.digest_verified = Some(true);
            return;
        }
    }
    event.coverage = first;
    event.digest_verified = Some(false);
}

fn replay(events: &[Event], algs: &[HashAlg], locality: Option<u8>) -> PcrBanks {
    let mut banks = PcrBanks::new();
    for &alg in algs {
        let pcrs = banks.entry(alg).or_default();
        if let Some(l) = locality {
            let mut raw = [0u8; crate::alg::MAX_DIGEST_LEN];
            raw[alg.len() - 1] = l;
            if let Some(d) = Digest::from_bytes(alg, &raw[..alg.len()]) {
                pcrs.insert(0, d);
            }
        }
    }
    for event in events.iter().filter(|e| e.is_extended()) {
        for d in &event.digests {
            if let Some(pcrs) = banks.get_mut(&d.alg()) {
                pcrs.entry(event.pcr).or_insert_with(|| d.alg().zero()).extend(d.as_bytes());
            }
        }
    }
    banks
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Digests<'a>(&'a Event);
        impl Serialize for Digests<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m =
                    s.serialize_map(Some(self.0.digests.len() + self.0.other_digests.len()))?;
                for d in &self.0.digests {
                    m.serialize_entry(d.alg().name(), &d.to_hex())?;
                }
                for (id, raw) in &self.0.other_digests {
                    m.serialize_entry(&format!("0x{id:04x}"), &hex::encode(raw))?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("Event", 10)?;
        st.serialize_field("event", &self.number)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("pcr", &self.pcr)?;
        st.serialize_field("type", &self.event_type)?;
        st.serialize_field("type_id", &self.event_type.0)?;
        st.serialize_field("digests", &Digests(self))?;
        st.serialize_field("data_size", &self.data.len())?;
        st.serialize_field("covered", &self.coverage)?;
        st.serialize_field("digest_verified", &self.digest_verified)?;
        st.serialize_field("decoded", &self.decode())?;
        st.end()
    }
}

/// The JSON of `kctl eventlog show -o json`: `{"events": [...], "pcrs": {"sha256": {"0": hex}}}`.
impl Serialize for EventLog {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Pcrs<'a>(&'a PcrBanks);
        impl Serialize for Pcrs<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (alg, pcrs) in self.0 {
                    let values: BTreeMap<String, String> =
                        pcrs.iter().map(|(i, d)| (i.to_string(), d.to_hex())).collect();
                    m.serialize_entry(alg.name(), &values)?;
                }
                m.end()
            }
        }
        let mut st = s.serialize_struct("EventLog", 2)?;
        st.serialize_field("events", &self.events)?;
        st.serialize_field("pcrs", &Pcrs(&self.pcrs))?;
        st.end()
    }
}
