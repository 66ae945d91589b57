//! Producing to output topics.
