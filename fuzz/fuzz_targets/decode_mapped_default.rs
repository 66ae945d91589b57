//! Fuzzes the mapped JSON-lines format with the default field mapping (every
//! canonical field name at the top level) on arbitrary bytes taken as one
//! input record. See common.rs for the properties checked.
#![no_main]

use keywatch::decode::{Decoder, FieldMapping, Format};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|record: &[u8]| {
    let decoder = Decoder::new(Format::Mapped, Some(FieldMapping::default()), common::MAX_RECORD_BYTES);
    common::check_record(&decoder, record);
});
