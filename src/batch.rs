//! A micro-batch laid out as Arrow columns: each event resolved to interned
//! ids and enriched with GeoIP, one column per attribute. Detectors then read
//! rows in order; the columns are also what benches and tools inspect.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float32Builder, Int64Builder, UInt8Builder, UInt16Builder, UInt32Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, UInt8Array, UInt16Array, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema};

use crate::enrich::{Country, GeoInfo, NetClass};

/// Columns of one resolved micro-batch.
pub struct ResolvedBatch {
    pub ts_ms: Int64Array,
    pub key: UInt32Array,
    pub endpoint: UInt32Array,
    pub client: UInt32Array,
    pub status: UInt16Array,
    pub net_class: UInt8Array,
    pub country: UInt16Array,
    pub asn: UInt32Array,
    pub lat: Float32Array,
    pub lon: Float32Array,
    pub accuracy_km: UInt16Array,
    pub has_location: BooleanArray,
}

/// Appends rows, then freezes them into a [`ResolvedBatch`].
pub struct BatchBuilder {
    ts_ms: Int64Builder,
    key: UInt32Builder,
    endpoint: UInt32Builder,
    client: UInt32Builder,
    status: UInt16Builder,
    net_class: UInt8Builder,
    country: UInt16Builder,
    asn: UInt32Builder,
    lat: Float32Builder,
    lon: Float32Builder,
    accuracy_km: UInt16Builder,
    has_location: BooleanBuilder,
}

fn class_code(class: NetClass) -> u8 {
    match class {
        NetClass::Public => 0,
        NetClass::Private => 1,
        NetClass::Loopback => 2,
        NetClass::LinkLocal => 3,
        NetClass::Reserved => 4,
    }
}

fn class_from_code(code: u8) -> NetClass {
    match code {
        0 => NetClass::Public,
        1 => NetClass::Private,
        2 => NetClass::Loopback,
        3 => NetClass::LinkLocal,
        _ => NetClass::Reserved,
    }
}

impl BatchBuilder {
    pub fn with_capacity(capacity: usize) -> BatchBuilder {
        BatchBuilder {
            ts_ms: Int64Builder::with_capacity(capacity),
            key: UInt32Builder::with_capacity(capacity),
            endpoint: UInt32Builder::with_capacity(capacity),
            client: UInt32Builder::with_capacity(capacity),
            status: UInt16Builder::with_capacity(capacity),
            net_class: UInt8Builder::with_capacity(capacity),
            country: UInt16Builder::with_capacity(capacity),
            asn: UInt32Builder::with_capacity(capacity),
            lat: Float32Builder::with_capacity(capacity),
            lon: Float32Builder::with_capacity(capacity),
            accuracy_km: UInt16Builder::with_capacity(capacity),
            has_location: BooleanBuilder::with_capacity(capacity),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn append(&mut self, ts_ms: i64, key: u32, endpoint: u32, client: u32, status: u16, geo: &GeoInfo) {
        self.ts_ms.append_value(ts_ms);
        self.key.append_value(key);
        self.endpoint.append_value(endpoint);
        self.client.append_value(client);
        self.status.append_value(status);
        self.net_class.append_value(class_code(geo.class));
        self.country.append_value(u16::from_be_bytes(geo.country.0));
        self.asn.append_value(geo.asn);
        self.lat.append_value(geo.lat);
        self.lon.append_value(geo.lon);
        self.accuracy_km.append_value(geo.accuracy_km);
        self.has_location.append_value(geo.has_location);
    }

    pub fn finish(&mut self) -> ResolvedBatch {
        ResolvedBatch {
            ts_ms: self.ts_ms.finish(),
            key: self.key.finish(),
            endpoint: self.endpoint.finish(),
            client: self.client.finish(),
            status: self.status.finish(),
            net_class: self.net_class.finish(),
            country: self.country.finish(),
            asn: self.asn.finish(),
            lat: self.lat.finish(),
            lon: self.lon.finish(),
            accuracy_km: self.accuracy_km.finish(),
            has_location: self.has_location.finish(),
        }
    }
}

impl ResolvedBatch {
    pub fn len(&self) -> usize {
        self.ts_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts_ms.is_empty()
    }

    /// The GeoIP answer of one row, rebuilt from its columns.
    pub fn geo(&self, row: usize) -> GeoInfo {
        GeoInfo {
            class: class_from_code(self.net_class.value(row)),
            country: Country(self.country.value(row).to_be_bytes()),
            asn: self.asn.value(row),
            lat: self.lat.value(row),
            lon: self.lon.value(row),
            has_location: self.has_location.value(row),
            accuracy_km: self.accuracy_km.value(row),
        }
    }

    /// Authorization failures (401/403) in the batch, computed on the column.
    pub fn auth_failures(&self) -> usize {
        self.status
            .values()
            .iter()
            .filter(|status| **status == 401 || **status == 403)
            .count()
    }

    /// The columns as an Arrow record batch (for inspection and export).
    pub fn to_record_batch(&self) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts_ms", DataType::Int64, false),
            Field::new("key", DataType::UInt32, false),
            Field::new("endpoint", DataType::UInt32, false),
            Field::new("client", DataType::UInt32, false),
            Field::new("status", DataType::UInt16, false),
            Field::new("net_class", DataType::UInt8, false),
            Field::new("country", DataType::UInt16, false),
            Field::new("asn", DataType::UInt32, false),
            Field::new("lat", DataType::Float32, false),
            Field::new("lon", DataType::Float32, false),
            Field::new("accuracy_km", DataType::UInt16, false),
            Field::new("has_location", DataType::Boolean, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts_ms.clone()),
            Arc::new(self.key.clone()),
            Arc::new(self.endpoint.clone()),
            Arc::new(self.client.clone()),
            Arc::new(self.status.clone()),
            Arc::new(self.net_class.clone()),
            Arc::new(self.country.clone()),
            Arc::new(self.asn.clone()),
            Arc::new(self.lat.clone()),
            Arc::new(self.lon.clone()),
            Arc::new(self.accuracy_km.clone()),
            Arc::new(self.has_location.clone()),
        ];
        RecordBatch::try_new(schema, columns).expect("columns match the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_columns() {
        let mut builder = BatchBuilder::with_capacity(2);
        let geo = GeoInfo {
            class: NetClass::Public,
            country: Country(*b"GB"),
            asn: 2856,
            lat: 51.5,
            lon: -0.12,
            has_location: true,
            accuracy_km: 20,
        };
        builder.append(1, 7, 3, 2, 403, &geo);
        builder.append(2, 8, 4, 2, 200, &GeoInfo::default());
        let batch = builder.finish();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.geo(0), geo);
        assert_eq!(batch.key.value(1), 8);
        assert_eq!(batch.auth_failures(), 1);
        assert_eq!(batch.to_record_batch().num_rows(), 2);
    }
}
