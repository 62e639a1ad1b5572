//! What a measured-boot policy looks at, extracted from a parsed log: only from data that its
//! digest covers, or from the digests themselves.

use crate::alg::{Digest, HashAlg};
use crate::eventlog::efi::{self, SignatureRef, UefiVariable};
use crate::eventlog::{Coverage, Event, EventLog, EventType, ipl_text};

/// A digest together with the event it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured<'a> {
    pub event: &'a Event,
    pub digest: Digest,
}

/// A trusted UEFI variable measurement.
#[derive(Debug, Clone)]
pub(crate) struct VarFact<'a> {
    pub event: &'a Event,
    pub data: &'a [u8],
}

/// A kernel command line candidate (PCR 8).
#[derive(Debug, Clone)]
pub(crate) struct CmdlineFact<'a> {
    pub event: &'a Event,
    pub cmdline: String,
}

/// The boot facts a policy is evaluated against.
#[derive(Debug, Default)]
pub(crate) struct BootFacts<'a> {
    /// `SecureBoot` as measured in PCR 7 before its separator, when its data is proven.
    pub secure_boot: Option<VarFact<'a>>,
    pub pk: Option<VarFact<'a>>,
    pub kek: Option<VarFact<'a>>,
    pub db: Option<VarFact<'a>>,
    pub dbx: Option<VarFact<'a>>,
    /// PCR 0 S-CRTM and platform firmware measurements.
    pub firmware: Vec<Measured<'a>>,
    /// PCR 4 boot-services applications loaded before grub's first measurement (PCR 8/9).
    pub bootloaders: Vec<Measured<'a>>,
    /// Kernels: PCR 4 applications loaded after grub started, and the file grub read
    /// for its `linux` command (PCR 9).
    pub kernels: Vec<Measured<'a>>,
    pub cmdlines: Vec<CmdlineFact<'a>>,
}

const FIRMWARE_TYPES: [EventType; 6] = [
    EventType::S_CRTM_CONTENTS,
    EventType::S_CRTM_VERSION,
    EventType::EFI_PLATFORM_FIRMWARE_BLOB,
    EventType::EFI_PLATFORM_FIRMWARE_BLOB2,
    EventType::POST_CODE,
    EventType::EFI_HCRTM_EVENT,
];

/// True for events an OS loader (shim, grub) writes, as opposed to firmware.
pub(crate) fn is_os_loader_event(e: &Event) -> bool {
    e.event_type == EventType::IPL && matches!(e.pcr, 8 | 9 | 14)
}

/// grub's `linux`/`linuxefi` command: the kernel path and command line.
fn grub_linux_args(text: &str) -> Option<&str> {
    text.strip_prefix("linux ").or_else(|| text.strip_prefix("linuxefi "))
}

pub(crate) fn collect<'a>(log: &'a EventLog, bank: HashAlg, pcrs: &[u32]) -> BootFacts<'a> {
    let mut facts = BootFacts::default();
    let covered = |e: &Event| pcrs.contains(&e.pcr);
    let mut pcr7_separated = false;
    let mut loader_started = false;
    let mut after_grub_linux = false;
    for e in log.measurements() {
        if !e.is_extended() {
            continue;
        }
        // grub's first measurement: what PCR 4 records from then on, grub loaded. (shim's
        // PCR 14 measurements come before it loads grub.)
        if e.event_type == EventType::IPL && matches!(e.pcr, 8 | 9) {
            loader_started = true;
        }
        if e.pcr == 7 && e.event_type == EventType::SEPARATOR {
            pcr7_separated = true;
        }
        if !covered(e) {
            continue;
        }
        let digest = e.digest(bank).copied();
        match (e.pcr, e.event_type) {
            (7, EventType::EFI_VARIABLE_DRIVER_CONFIG)
                if !pcr7_separated && e.data_trusted() && e.coverage == Coverage::EventData =>
            {
                if let Some(var) = UefiVariable::parse(&e.data) {
                    let slot = match (var.guid, var.name.as_str()) {
                        (g, "SecureBoot") if g == efi::EFI_GLOBAL_VARIABLE => {
                            &mut facts.secure_boot
                        }
                        (g, "PK") if g == efi::EFI_GLOBAL_VARIABLE => &mut facts.pk,
                        (g, "KEK") if g == efi::EFI_GLOBAL_VARIABLE => &mut facts.kek,
                        (g, "db") if g == efi::EFI_IMAGE_SECURITY_DATABASE => &mut facts.db,
                        (g, "dbx") if g == efi::EFI_IMAGE_SECURITY_DATABASE => &mut facts.dbx,
                        _ => continue,
                    };
                    // The first measurement counts; later ones are reported by the order checks.
                    if slot.is_none() {
                        *slot = Some(VarFact { event: e, data: var.data });
                    }
                }
            }
            (0, t) if FIRMWARE_TYPES.contains(&t) => {
                if let Some(digest) = digest {
                    facts.firmware.push(Measured { event: e, digest });
                }
            }
            (4, EventType::EFI_BOOT_SERVICES_APPLICATION) => {
                if let Some(digest) = digest {
                    let m = Measured { event: e, digest };
                    if loader_started { facts.kernels.push(m) } else { facts.bootloaders.push(m) }
                }
            }
            (8, EventType::IPL) => {
                after_grub_linux = false;
                if !e.data_trusted() {
                    continue;
                }
                if let Some((prefix, text)) = ipl_text(&e.data) {
                    let text = String::from_utf8_lossy(text);
                    if prefix == "kernel_cmdline: " {
                        facts.cmdlines.push(CmdlineFact { event: e, cmdline: text.into_owned() });
                    } else if let Some(args) = grub_linux_args(&text) {
                        after_grub_linux = true;
                        facts.cmdlines.push(CmdlineFact { event: e, cmdline: args.to_owned() });
                    }
                }
            }
            (9, EventType::IPL) if after_grub_linux => {
                after_grub_linux = false;
                if let Some(digest) = digest {
                    facts.kernels.push(Measured { event: e, digest });
                }
            }
            _ => {}
        }
    }
    facts
}

/// The signatures of a signature-database variable (empty when it does not parse).
pub(crate) fn signatures<'a>(var: &VarFact<'a>) -> Vec<SignatureRef<'a>> {
    efi::signature_entries(var.data).unwrap_or_default()
}
