//! Arrow columns of a micro-batch.
