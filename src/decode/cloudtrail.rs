//! AWS CloudTrail records.
