//! Reading input files, with errors that name the file.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

use crate::exit::{Failure, input};

/// Reads a whole file, or stdin for `-`.
pub fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("stdin").map_err(input)?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| path.display().to_string()).map_err(input)
}

/// Turns a parse error into an input failure naming the file.
pub fn malformed<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
) -> impl FnOnce(E) -> Failure {
    let name = display(path);
    move |e| input(anyhow::Error::new(e).context(name))
}

pub fn display(path: &Path) -> String {
    if path == Path::new("-") { "stdin".to_owned() } else { path.display().to_string() }
}
