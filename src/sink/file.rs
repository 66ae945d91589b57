//! Writing JSON lines files.
