//! Consuming input topics.
