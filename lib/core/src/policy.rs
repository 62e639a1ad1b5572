//! Runtime (IMA) policies: this project's format and Keylime's formats.
