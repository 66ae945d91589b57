//! Canonical JSON lines (schemas/access-event.schema.json).
