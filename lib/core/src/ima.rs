//! Linux IMA measurement lists: parsing, PCR 10 replay, signatures.
