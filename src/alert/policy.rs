//! Which alerts ask for a revocation.
