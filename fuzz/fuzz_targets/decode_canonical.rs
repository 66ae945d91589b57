//! Fuzzes the `canonical` input format (`Format::Canonical`) on arbitrary bytes taken
//! as one input record. See common.rs for the properties checked.
#![no_main]

use keywatch::decode::{Decoder, Format};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|record: &[u8]| {
    let decoder = Decoder::new(Format::Canonical, None, common::MAX_RECORD_BYTES);
    common::check_record(&decoder, record);
});
