//! Turning a damaged file into an error instead of a panic.
//!
//! redb trusts the pages of a file it closed cleanly: bytes changed behind its back (a disk
//! error, a stray write, a bad restore) make it panic on the first read that walks them ("invalid
//! page type", "entered unreachable code"), or decode garbage. Every call into redb goes through
//! [`guard`], which catches such a panic and reports it as [`StoreError::Damaged`] naming the
//! file. The default panic hook would still print the panic (and a backtrace hint) to stderr
//! before it is caught, so a hook installed once silences panics raised inside a guard on the
//! same thread; any other panic is printed as before.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Once;

use crate::StoreError;

thread_local! {
    /// How many guards this thread is inside (a guarded call may nest another).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
    /// Where and why the last panic caught by a guard on this thread was raised.
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

/// A panic a guard caught: its location and message.
struct Caught {
    /// The panic came from redb's own code (damage), not from this project's.
    in_redb: bool,
    text: String,
}

static QUIET_HOOK: Once = Once::new();

/// Runs `body`; a panic inside it (redb walking a damaged page) becomes
/// [`StoreError::Damaged`], and an error that means damage (a corrupted page, a record that does
/// not decode) is reported as such too, naming `path`.
pub(crate) fn guard<T>(
    path: &Path,
    schema: &'static str,
    body: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) == 0 {
                previous(info);
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
            let in_redb = file.contains("/redb-") || file.contains("/redb/");
            let text = format!("{file}:{line}: {}", one_line(&message));
            CAUGHT.with(|c| *c.borrow_mut() = Some(Caught { in_redb, text }));
        }));
    });
    let depth = Depth::enter();
    // Nothing `body` borrows is used after a panic except to report it: the store it ran on is
    // reported damaged, and every later call on it goes through a guard again.
    let outcome = catch_unwind(AssertUnwindSafe(body));
    drop(depth);
    match outcome {
        Ok(result) => result.map_err(|e| e.damaged(path, schema)),
        // redb's panic messages are assertion texts ("entered unreachable code"), not a
        // diagnosis; the full check says what is wrong. A panic raised outside redb is more
        // likely a bug of this project than damage: its location and message are kept.
        Err(_) => {
            let caught = CAUGHT.with(|c| c.borrow_mut().take());
            let detail = match caught {
                Some(Caught { in_redb: false, text }) => format!(
                    "reading it panicked at {text}, outside redb: a bug to report if \
                     --check-store finds the file sound"
                ),
                Some(Caught { in_redb: true, .. }) => "redb cannot read its pages".to_owned(),
                None => "redb cannot read its pages".to_owned(),
            };
            Err(StoreError::Damaged { path: path.to_owned(), schema, detail })
        }
    }
}

/// Marks this thread as inside a guard until dropped (also when unwinding).
struct Depth;

impl Depth {
    fn enter() -> Depth {
        GUARDED.with(|g| g.set(g.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        GUARDED.with(|g| g.set(g.get().saturating_sub(1)));
    }
}

/// `text` on one line (error messages are printed as one line).
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a redb error says the file's contents are wrong (not I/O, locking or misuse).
pub(crate) fn is_corruption(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Corrupted(_))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::registrar::{AgentRecord, RegistrarStore};
    use crate::verifier::{
        AgentEntry, Batch, HistoryRecord, Timestamp, VerdictRecord, VerifierStore,
    };

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn entry(id: &str) -> AgentEntry {
        AgentEntry {
            agent_id: id.to_owned(),
            contact_ip: "127.0.0.1".to_owned(),
            contact_port: 9002,
            ak_public: vec![7; 280],
            agent_certificate: vec![9; 500],
            runtime_policy: String::new(),
            measured_boot_policy: String::new(),
            pcr_policy_json: String::new(),
            v_key_half: Vec::new(),
            key_delivered: false,
            accept_hash_algorithms: Vec::new(),
            accept_signing_algorithms: Vec::new(),
            hash_algorithm: "sha256".to_owned(),
            state: 2,
            attestation_count: 20,
            enrolled_at: Timestamp::now(),
            last_attestation_at: None,
            last_success_at: None,
            last_verdict: None,
            attestation_state_json: "{\"ima\":{}}".to_owned(),
            ima_offset: 0,
            reset_count: 0,
            consecutive_errors: 0,
            history_sequence: 20,
            payload_digest: String::new(),
            revision: 0,
        }
    }

    /// A verifier store of 1,000 agents with 20 history records each (about 2 MB).
    fn populated_verifier_store(dir: &Path) -> Result<PathBuf, StoreError> {
        let path = dir.join("verifier.redb");
        let store = VerifierStore::open(&path)?;
        for chunk in 0..10 {
            let mut batch = Batch::default();
            for n in 0..100 {
                let id = format!("agent-{chunk:02}-{n:03}");
                batch.agents.push(entry(&id));
                for sequence in 1..=20 {
                    let record = HistoryRecord {
                        sequence,
                        at: Timestamp::now(),
                        verdict: Some(VerdictRecord {
                            at: Timestamp::now(),
                            checked: vec!["quote".to_owned()],
                            findings: Vec::new(),
                        }),
                        reset_count: 1,
                        restart_count: 0,
                        clock: sequence * 1000,
                        ima_entries: 3,
                        duration_us: 900,
                    };
                    batch.history.push((id.clone(), record));
                }
            }
            store.commit(batch, 0)?;
        }
        Ok(path)
    }

    /// Overwrites one page-aligned 4 KiB block in the middle of the file with pseudo-random
    /// bytes (a fixed sequence, so a failure reproduces).
    fn damage_the_middle(path: &Path) -> Result<(), std::io::Error> {
        let mut bytes = std::fs::read(path)?;
        let middle = bytes.len() / 2 / 4096 * 4096;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for byte in &mut bytes[middle..middle + 4096] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        std::fs::write(path, bytes)
    }

    /// Opens the store and reads everything a verifier reads, as it would at start and later;
    /// the first error.
    fn open_and_read_everything(path: &Path) -> Result<(), StoreError> {
        let store = VerifierStore::open(path)?;
        for agent in store.list_agents(None, usize::MAX)? {
            store.history(&agent.agent_id, None, usize::MAX)?;
        }
        store.events_after(0, usize::MAX)?;
        Ok(())
    }

    fn expect_damage_naming(error: Option<StoreError>, path: &Path) -> TestResult {
        let Some(error) = error else {
            return Err("the damaged store was read without an error".into());
        };
        assert!(error.is_damage(), "{error:?}");
        let message = error.to_string();
        let expected = format!("{}: the verifier store is damaged (", path.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.contains("restore it from a backup"), "{message}");
        assert!(message.contains("keylime_verifier --check-store"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        Ok(())
    }

    #[test]
    fn a_panic_outside_redb_keeps_its_location_and_message() {
        let path = Path::new("/var/lib/keylime/verifier.redb");
        let caught = guard(path, "verifier", || -> Result<(), StoreError> {
            panic!("decoding went wrong");
        });
        let Err(StoreError::Damaged { detail, .. }) = caught else {
            panic!("not reported as damage: {caught:?}")
        };
        assert!(
            detail.contains("damage.rs:") && detail.contains("decoding went wrong"),
            "{detail}"
        );
        assert!(detail.contains("outside redb"), "{detail}");
    }

    #[test]
    fn a_damaged_verifier_store_is_an_error_naming_the_file_not_a_panic() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = populated_verifier_store(dir.path())?;
        damage_the_middle(&path)?;
        expect_damage_naming(open_and_read_everything(&path).err(), &path)
    }

    #[test]
    fn the_full_check_finds_damage_and_passes_a_sound_store() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = populated_verifier_store(dir.path())?;
        let check = VerifierStore::check(&path)?;
        assert!(!check.repaired);
        assert_eq!(check.schema_version, crate::verifier::SCHEMA.version());
        let count = |table| check.tables.iter().find(|(t, _)| *t == table).map(|(_, n)| *n);
        assert_eq!(count("agents"), Some(1000));
        assert_eq!(count("history"), Some(20_000));
        assert_eq!(check.records(), 21_000);
        // The check is read-only for a sound file: the store opens and reads as before.
        open_and_read_everything(&path)?;

        damage_the_middle(&path)?;
        expect_damage_naming(VerifierStore::check(&path).err(), &path)?;
        // Still damaged: the check repaired nothing it could not.
        expect_damage_naming(open_and_read_everything(&path).err(), &path)
    }

    #[test]
    fn checking_a_missing_store_names_it_and_creates_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("verifier.redb");
        let message = VerifierStore::check(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with(&path.display().to_string()), "{message}");
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn a_damaged_registrar_store_is_found_by_reading_it_all() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registrar.redb");
        let store = RegistrarStore::open(&path)?;
        let records = (0..3000).map(|n| AgentRecord {
            agent_id: format!("agent-{n:05}"),
            ek_public: vec![1; 300],
            ek_certificate: vec![2; 900],
            ek_intermediate_certificates: Vec::new(),
            ek_certificate_verified: true,
            ak_public: vec![3; 280],
            ak_name: vec![4; 34],
            agent_certificate: vec![5; 500],
            contact_ip: "127.0.0.1".to_owned(),
            contact_port: 9002,
            registration_count: 1,
            registered_at: Timestamp::now(),
            activated_at: Timestamp::now(),
        });
        store.activate_many(records.collect())?;
        assert_eq!(store.read_all()?, 3000);
        drop(store);
        assert_eq!(RegistrarStore::check(&path)?.records(), 3000);

        damage_the_middle(&path)?;
        let error = RegistrarStore::open(&path).and_then(|store| store.read_all()).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        let expected = format!("{}: the registrar store is damaged (", path.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(message.contains("keylime_registrar --check-store"), "{message}");
        let message = RegistrarStore::check(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with(&expected), "{message}");
        Ok(())
    }
}
