//! A configurable field mapping for other JSON gateway logs.

use serde::{Deserialize, Serialize};

/// Where each canonical field is found in a gateway's JSON record: a dotted
/// path such as `request.client_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {}
