//! Golden tests on real logs, synthetic signed entries, and property tests.
