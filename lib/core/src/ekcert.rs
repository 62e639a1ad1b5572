//! EK certificate validation against a store of TPM vendor CA certificates.
