//! Exit codes and how failures are reported.

/// What a command concluded, when it ran to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1: evaluated and negative (a policy test failed).
    Negative,
}

impl From<Outcome> for u8 {
    fn from(o: Outcome) -> u8 {
        match o {
            Outcome::Ok => 0,
            Outcome::Negative => 1,
        }
    }
}

/// Why a command could not finish.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: a check was evaluated and came out negative (e.g. an identity quote that does not
    /// verify).
    Negative(anyhow::Error),
    /// Exit 2: bad usage, config or input (unreadable or malformed file).
    Input(anyhow::Error),
    /// Exit 3: the thing asked for does not exist.
    NotFound(anyhow::Error),
    /// Exit 4: a server or transport error.
    Server(anyhow::Error),
    /// Exit 5: refused in the current state (a policy still in use, settings that conflict
    /// with what is stored).
    Refused(anyhow::Error),
}

impl Failure {
    /// The error, whatever its exit code.
    pub fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Negative(e)
            | Failure::Input(e)
            | Failure::NotFound(e)
            | Failure::Refused(e)
            | Failure::Server(e) => e,
        }
    }

    /// Prints the error on stderr, prefixed with the program's name, and returns the exit code.
    pub fn report(self, program: &str) -> u8 {
        let (code, err) = match self {
            Failure::Negative(e) => (1, e),
            Failure::Input(e) => (2, e),
            Failure::NotFound(e) => (3, e),
            Failure::Server(e) => (4, e),
            Failure::Refused(e) => (5, e),
        };
        // One line: the context chain joined, outermost first.
        eprintln!("{program}: {err:#}");
        code
    }
}

/// Shorthand for input errors: `.map_err(input)`.
pub fn input(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Input(e.into())
}

pub type CmdResult = Result<Outcome, Failure>;
