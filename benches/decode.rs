//! Decode throughput benches (filled in below).

fn main() {}
