//! Software TPM2_MakeCredential for RSA and ECC endorsement keys.
