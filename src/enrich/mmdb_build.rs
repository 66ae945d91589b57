//! Builds small MaxMind-format City and ASN databases, in the real GeoIP2
//! record layout, for tests, the generator and the demo.
