//! The one rule for agent ids, shared by the registrar (which records them), the verifier
//! (which enrols them) and kctl: a UUID or the 64-hex `hash_ek`, or any name of 1 to 80
//! characters of `[A-Za-z0-9._-]`. Ids are used as file names and log fields, so nothing else
//! is accepted.

/// Longest accepted agent id (a UUID is 36 characters, `hash_ek` 64).
pub(crate) const MAX_LEN: usize = 80;

/// Why a string is not an agent id. The messages quote the offending part, never the whole
/// id (it may be 300 characters of noise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentIdError {
    #[error("empty")]
    Empty,
    #[error("{len} characters, at most {MAX_LEN} allowed")]
    TooLong { len: usize },
    #[error("character {0:?} is not allowed (only A-Z, a-z, 0-9, '.', '_', '-')")]
    Character(char),
}

/// Checks an agent id against the rule above.
pub fn check(agent_id: &str) -> Result<(), AgentIdError> {
    if agent_id.is_empty() {
        return Err(AgentIdError::Empty);
    }
    let len = agent_id.chars().count();
    if len > MAX_LEN {
        return Err(AgentIdError::TooLong { len });
    }
    match agent_id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(bad) => Err(AgentIdError::Character(bad)),
        None => Ok(()),
    }
}

/// The id as an error message shows it: quoted, and cut after 40 characters so that a
/// 300-character mistake does not fill the terminal.
pub fn shown(agent_id: &str) -> String {
    const SHOWN: usize = 40;
    match agent_id.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &agent_id[..cut]),
        None => format!("{agent_id:?}"),
    }
}

/// [`check`] with the message a daemon or kctl reports: the value, then what is wrong.
pub fn check_shown(agent_id: &str) -> Result<(), String> {
    check(agent_id).map_err(|e| format!("{}: {e}", shown(agent_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_hash_ek_and_plain_names_are_agent_ids() {
        for good in ["d432fbb3-d2f1-4a97-9ef7-75bd81c00000", &"ab".repeat(32), "agent_1.example"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn the_reason_names_what_is_wrong() {
        assert_eq!(check(""), Err(AgentIdError::Empty));
        assert_eq!(check(&"a".repeat(300)), Err(AgentIdError::TooLong { len: 300 }));
        assert_eq!(check("bad id!"), Err(AgentIdError::Character(' ')));
        assert_eq!(check("../etc"), Err(AgentIdError::Character('/')));
        assert_eq!(check("é"), Err(AgentIdError::Character('é')));
        assert_eq!(
            AgentIdError::TooLong { len: 81 }.to_string(),
            "81 characters, at most 80 allowed"
        );
    }

    #[test]
    fn messages_quote_the_value_and_cut_long_ones() {
        assert_eq!(
            check_shown("bad id!"),
            Err("\"bad id!\": character ' ' is not allowed (only A-Z, a-z, 0-9, '.', '_', '-')"
                .to_owned())
        );
        let long = check_shown(&"x".repeat(300)).err().unwrap_or_default();
        assert_eq!(long, format!("{:?}...: 300 characters, at most 80 allowed", "x".repeat(40)));
    }
}
