//! Golden tests on Keylime fixtures, format round trips and property tests.
