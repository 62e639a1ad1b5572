//! Import of Keylime's measured-boot reference state (the `example` policy's refstate).
