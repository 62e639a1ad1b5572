//! TCG event types (TCG PC Client Platform Firmware Profile, section 10.4.1) and their names.

use std::fmt;

use serde::{Serialize, Serializer};

/// An event type as found in a log; unknown values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u32);

impl EventType {
    pub const PREBOOT_CERT: EventType = EventType(0x0);
    pub const POST_CODE: EventType = EventType(0x1);
    pub const NO_ACTION: EventType = EventType(0x3);
    pub const SEPARATOR: EventType = EventType(0x4);
    pub const ACTION: EventType = EventType(0x5);
    pub const EVENT_TAG: EventType = EventType(0x6);
    pub const S_CRTM_CONTENTS: EventType = EventType(0x7);
    pub const S_CRTM_VERSION: EventType = EventType(0x8);
    pub const CPU_MICROCODE: EventType = EventType(0x9);
    pub const PLATFORM_CONFIG_FLAGS: EventType = EventType(0xa);
    pub const TABLE_OF_DEVICES: EventType = EventType(0xb);
    pub const COMPACT_HASH: EventType = EventType(0xc);
    pub const IPL: EventType = EventType(0xd);
    pub const IPL_PARTITION_DATA: EventType = EventType(0xe);
    pub const NONHOST_CODE: EventType = EventType(0xf);
    pub const NONHOST_CONFIG: EventType = EventType(0x10);
    pub const NONHOST_INFO: EventType = EventType(0x11);
    pub const OMIT_BOOT_DEVICE_EVENTS: EventType = EventType(0x12);
    pub const POST_CODE2: EventType = EventType(0x13);
    pub const EFI_VARIABLE_DRIVER_CONFIG: EventType = EventType(0x8000_0001);
    pub const EFI_VARIABLE_BOOT: EventType = EventType(0x8000_0002);
    pub const EFI_BOOT_SERVICES_APPLICATION: EventType = EventType(0x8000_0003);
    pub const EFI_BOOT_SERVICES_DRIVER: EventType = EventType(0x8000_0004);
    pub const EFI_RUNTIME_SERVICES_DRIVER: EventType = EventType(0x8000_0005);
    pub const EFI_GPT_EVENT: EventType = EventType(0x8000_0006);
    pub const EFI_ACTION: EventType = EventType(0x8000_0007);
    pub const EFI_PLATFORM_FIRMWARE_BLOB: EventType = EventType(0x8000_0008);
    pub const EFI_HANDOFF_TABLES: EventType = EventType(0x8000_0009);
    pub const EFI_PLATFORM_FIRMWARE_BLOB2: EventType = EventType(0x8000_000a);
    pub const EFI_HANDOFF_TABLES2: EventType = EventType(0x8000_000b);
    pub const EFI_VARIABLE_BOOT2: EventType = EventType(0x8000_000c);
    pub const EFI_GPT_EVENT2: EventType = EventType(0x8000_000d);
    pub const EFI_HCRTM_EVENT: EventType = EventType(0x8000_0010);
    pub const EFI_VARIABLE_AUTHORITY: EventType = EventType(0x8000_00e0);
    pub const EFI_SPDM_FIRMWARE_BLOB: EventType = EventType(0x8000_00e1);
    pub const EFI_SPDM_FIRMWARE_CONFIG: EventType = EventType(0x8000_00e2);

    /// The specification's name (`EV_...`), or `None` for a value the specification does not define.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "EV_PREBOOT_CERT",
            0x1 => "EV_POST_CODE",
            0x2 => "EV_UNUSED",
            0x3 => "EV_NO_ACTION",
            0x4 => "EV_SEPARATOR",
            0x5 => "EV_ACTION",
            0x6 => "EV_EVENT_TAG",
            0x7 => "EV_S_CRTM_CONTENTS",
            0x8 => "EV_S_CRTM_VERSION",
            0x9 => "EV_CPU_MICROCODE",
            0xa => "EV_PLATFORM_CONFIG_FLAGS",
            0xb => "EV_TABLE_OF_DEVICES",
            0xc => "EV_COMPACT_HASH",
            0xd => "EV_IPL",
            0xe => "EV_IPL_PARTITION_DATA",
            0xf => "EV_NONHOST_CODE",
            0x10 => "EV_NONHOST_CONFIG",
            0x11 => "EV_NONHOST_INFO",
            0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
            0x13 => "EV_POST_CODE2",
            0x8000_0000 => "EV_EFI_EVENT_BASE",
            0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
            0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
            0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
            0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
            0x8000_0006 => "EV_EFI_GPT_EVENT",
            0x8000_0007 => "EV_EFI_ACTION",
            0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
            0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
            0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
            0x8000_000d => "EV_EFI_GPT_EVENT2",
            0x8000_0010 => "EV_EFI_HCRTM_EVENT",
            0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
            0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
            0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
            _ => return None,
        })
    }

    /// True for the `EV_EFI_VARIABLE_*` types, whose data is a `UEFI_VARIABLE_DATA`.
    pub const fn is_efi_variable(self) -> bool {
        matches!(self.0, 0x8000_0001 | 0x8000_0002 | 0x8000_000c | 0x8000_00e0)
    }

    /// True for the image-load types, whose data is a `UEFI_IMAGE_LOAD_EVENT`.
    pub const fn is_image_load(self) -> bool {
        matches!(self.0, 0x8000_0003..=0x8000_0005)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "0x{:08x}", self.0),
        }
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
