//! A configurable field mapping for other JSON gateway logs (Kong, Envoy,
//! NGINX JSON access logs, ...): where each canonical field is found in the
//! gateway's record, written as a dotted path.
//!
//! The record is not built into a full JSON tree: the mapping's paths are
//! compiled once into a tree of the keys and indices along them
//! ([`MappedDecoder`]), and each record is read in one pass that descends
//! only along that tree, keeping the leaf strings borrowed from the input
//! where they need no unescaping.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use ipnet::IpNet;

use super::canonical::{check_ts_range, key_field, optional};
use super::{DecodeError, Scalar, expect_object, parse_record, scalar_visits};
use crate::event::{AccessEvent, parse_ts};

/// Where each canonical field is found in a gateway's JSON record.
///
/// A path is a dotted list of object keys, such as
/// `request.headers.x-api-key`; a key that itself contains dots is matched
/// whole (`"http.method"` in a flat record), and a number selects an element
/// of an array (`forwarded.0`). Every path defaults to the canonical field
/// name at the top level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Path of the event time, read as `ts_format` says.
    #[serde(default = "default_ts_path")]
    pub ts: String,
    /// How the event time is written: `rfc3339` text (the default),
    /// `epoch_ms` (milliseconds since 1970) or `epoch_s` (seconds since 1970,
    /// fractions allowed). Numbers written as strings are accepted for the
    /// epoch forms.
    #[serde(default)]
    pub ts_format: TsFormat,
    /// Path of the API key id, for example `request.headers.x-api-key`.
    /// Records where it is absent or empty are counted and skipped.
    #[serde(default = "default_key_id_path")]
    pub key_id: String,
    /// Path of the client IP address. `address:port`, `[v6]:port` and a
    /// comma-separated `X-Forwarded-For` list are accepted. In a list, the
    /// client is the right-most entry not in `trusted_proxies`: every proxy
    /// appends the address it received the request from, so entries to the
    /// left of the last untrusted one were written by the client itself and
    /// can be anything it likes.
    #[serde(default = "default_ip_path")]
    pub ip: String,
    /// Networks of your own proxies and load balancers (CIDR such as
    /// `10.0.0.0/8`, or a single address), skipped from the right of an
    /// `X-Forwarded-For` list. When every entry is trusted, the left-most is
    /// the client.
    #[serde(default, with = "cidr_list", skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpNet>,
    /// Path of the HTTP method.
    #[serde(default = "default_method_path")]
    pub method: String,
    /// Method used when a record has none at `method`; without it, such a
    /// record is rejected.
    #[serde(default)]
    pub default_method: Option<String>,
    /// Path of the endpoint (route or URL path).
    #[serde(default = "default_endpoint_path")]
    pub endpoint: String,
    /// Path of the HTTP response status (a number, or a number as text).
    #[serde(default = "default_status_path")]
    pub status: String,
    /// Status used when a record has none at `status`; without it, such a
    /// record is rejected.
    #[serde(default)]
    pub default_status: Option<u16>,
    /// Path of the user agent; empty when absent.
    #[serde(default = "default_user_agent_path")]
    pub user_agent: String,
    /// Path of the response size in bytes; 0 when absent.
    #[serde(default = "default_bytes_out_path")]
    pub bytes_out: String,
    /// Path of the request id; none when absent.
    #[serde(default = "default_request_id_path")]
    pub request_id: String,
}

/// How a mapped timestamp is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TsFormat {
    /// RFC 3339 text such as `2026-03-01T12:00:00.123Z`.
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// Seconds since the Unix epoch, with or without a fraction.
    EpochS,
}

fn default_ts_path() -> String {
    "ts".to_string()
}

fn default_key_id_path() -> String {
    "key_id".to_string()
}

fn default_ip_path() -> String {
    "ip".to_string()
}

fn default_method_path() -> String {
    "method".to_string()
}

fn default_endpoint_path() -> String {
    "endpoint".to_string()
}

fn default_status_path() -> String {
    "status".to_string()
}

fn default_user_agent_path() -> String {
    "user_agent".to_string()
}

fn default_bytes_out_path() -> String {
    "bytes_out".to_string()
}

fn default_request_id_path() -> String {
    "request_id".to_string()
}

impl Default for FieldMapping {
    fn default() -> Self {
        FieldMapping {
            ts: default_ts_path(),
            ts_format: TsFormat::default(),
            key_id: default_key_id_path(),
            ip: default_ip_path(),
            trusted_proxies: Vec::new(),
            method: default_method_path(),
            default_method: None,
            endpoint: default_endpoint_path(),
            status: default_status_path(),
            default_status: None,
            user_agent: default_user_agent_path(),
            bytes_out: default_bytes_out_path(),
            request_id: default_request_id_path(),
        }
    }
}

/// Decodes one record through `mapping`, compiling the mapping for this one
/// record. A [`Decoder`](super::Decoder) compiles its mapping once, when it
/// is built, into a [`MappedDecoder`]; use one of those for many records.
pub fn decode_mapped<'a>(record: &'a [u8], mapping: &FieldMapping) -> Result<AccessEvent<'a>, DecodeError> {
    MappedDecoder::new(mapping.clone()).decode(record)
}

/// A [`FieldMapping`] compiled for decoding many records.
///
/// The mapping's paths are compiled once into a tree: the object keys
/// and array indices that lead to some field, and at each place a field may
/// be found, the rank of that place in the order the path-by-path lookup
/// (`RawObject::lookup`) would try it. A record is then read in one serde
/// pass that descends only into values on the tree, skips every other value
/// without building it, and keeps for each field the best-ranked value
/// present, borrowed from the record unless it needs unescaping. The
/// result is the lookup's, at the cost of one parse of the record and no
/// allocation in the common case.
///
/// The path-by-path lookup stays as the definition of the results, and
/// decodes every record the single pass does not read through: one that is
/// not UTF-8, malformed JSON, or with a value serde rejects where the pass
/// looked (a number out of range, a lone surrogate in a string). Those are
/// rejected, if at all, with the lookup's own error, down to the position
/// in serde's message, which counts from the nested value the lookup parsed
/// rather than from the record.
#[derive(Debug, Clone)]
pub struct MappedDecoder {
    mapping: FieldMapping,
    /// `None` when the mapping's paths compile to more than
    /// [`MAX_CANDIDATES`] places or an object of more than
    /// [`MAX_KEYS_PER_OBJECT`] keys: every record is then looked up path by
    /// path.
    tree: Option<PathTree>,
}

impl MappedDecoder {
    pub fn new(mapping: FieldMapping) -> MappedDecoder {
        let tree = PathTree::compile(&mapping);
        MappedDecoder { mapping, tree }
    }

    /// The mapping this decoder was compiled from.
    pub fn mapping(&self) -> &FieldMapping {
        &self.mapping
    }

    /// Decodes one record.
    pub fn decode<'a>(&self, record: &'a [u8]) -> Result<AccessEvent<'a>, DecodeError> {
        expect_object(record)?;
        if let Some(mut found) = self.walk(record) {
            return event_from(&self.mapping, |field| Ok(optional(found.take(field))));
        }
        decode_by_lookup(record, &self.mapping)
    }

    /// The value of every field in one pass over `record`, or `None` when
    /// the record must be looked up path by path (see [`MappedDecoder`]).
    fn walk<'a>(&self, record: &'a [u8]) -> Option<Found<'a>> {
        let tree = self.tree.as_ref()?;
        let text = std::str::from_utf8(record).ok()?;
        tree.walk(text).ok()
    }
}

/// The canonical fields a mapping locates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    KeyId,
    Ts,
    Ip,
    Method,
    Endpoint,
    Status,
    UserAgent,
    BytesOut,
    RequestId,
}

impl Field {
    const ALL: [Field; 9] = [
        Field::KeyId,
        Field::Ts,
        Field::Ip,
        Field::Method,
        Field::Endpoint,
        Field::Status,
        Field::UserAgent,
        Field::BytesOut,
        Field::RequestId,
    ];
}

impl FieldMapping {
    fn path(&self, field: Field) -> &str {
        match field {
            Field::KeyId => &self.key_id,
            Field::Ts => &self.ts,
            Field::Ip => &self.ip,
            Field::Method => &self.method,
            Field::Endpoint => &self.endpoint,
            Field::Status => &self.status,
            Field::UserAgent => &self.user_agent,
            Field::BytesOut => &self.bytes_out,
            Field::RequestId => &self.request_id,
        }
    }
}

/// Decodes one record by following each path on its own through the
/// record's objects, parsed as the path reaches them. The definition of
/// what a mapping finds in a record, and the decoder of the records the
/// single pass of [`MappedDecoder`] leaves to it.
fn decode_by_lookup<'a>(record: &'a [u8], mapping: &FieldMapping) -> Result<AccessEvent<'a>, DecodeError> {
    let root: RawObject<'a> = parse_record(record)?;
    event_from(mapping, |field| root.lookup(mapping.path(field)).map(optional))
}

/// The event from the value found for each field (`None` when absent or
/// null). Fields are asked for and checked in a fixed order, which decides
/// the rejection of a record with several problems: the key first, as a
/// record without one is skipped whatever else is wrong with it.
fn event_from<'a>(
    mapping: &FieldMapping,
    mut value: impl FnMut(Field) -> Result<Option<Scalar<'a>>, DecodeError>,
) -> Result<AccessEvent<'a>, DecodeError> {
    let key_id = key_field(value(Field::KeyId)?, "key_id")?;
    let ts_ms = match value(Field::Ts)? {
        None => return Err(DecodeError::MissingField("ts")),
        Some(value) => mapped_ts(value, mapping.ts_format, &mapping.ts)?,
    };
    let ip = match value(Field::Ip)? {
        None => return Err(DecodeError::MissingField("ip")),
        Some(value) => mapped_ip(value.into_text("ip")?, &mapping.trusted_proxies)?,
    };
    let method = match (value(Field::Method)?, &mapping.default_method) {
        (Some(value), _) => value.into_text("method")?,
        (None, Some(default)) => Cow::Owned(default.clone()),
        (None, None) => return Err(DecodeError::MissingField("method")),
    };
    let endpoint = match value(Field::Endpoint)? {
        None => return Err(DecodeError::MissingField("endpoint")),
        Some(value) => value.into_text("endpoint")?,
    };
    let status = match (value(Field::Status)?, mapping.default_status) {
        (Some(value), _) => mapped_number(value, "status", &mapping.status)
            .and_then(|status| u16::try_from(status).map_err(|_| not_a_number("status", &mapping.status)))?,
        (None, Some(default)) => default,
        (None, None) => return Err(DecodeError::MissingField("status")),
    };
    let user_agent = match value(Field::UserAgent)? {
        None => Cow::Borrowed(""),
        Some(value) => value.into_text("user_agent")?,
    };
    let bytes_out = match value(Field::BytesOut)? {
        None => 0,
        Some(value) => mapped_number(value, "bytes_out", &mapping.bytes_out)?,
    };
    let request_id = value(Field::RequestId)?
        .map(|value| value.into_text("request_id"))
        .transpose()?;
    Ok(AccessEvent {
        ts_ms,
        key_id,
        ip,
        method,
        endpoint,
        status,
        user_agent,
        bytes_out,
        request_id,
    })
}

/// Most places a mapping's paths may compile to. A path of n dots can be
/// split into keys in up to 2^n ways (each dot separates two keys or
/// belongs to one), and each way is a place the field may be found; a
/// mapping of absurdly dotted paths is left to the path-by-path lookup
/// rather than compiled.
const MAX_CANDIDATES: usize = 4096;

/// Most keys the tree may lead through in one object: the pass keeps which
/// of them a record's object has shown so far in the bits of a `u64`.
const MAX_KEYS_PER_OBJECT: usize = 64;

/// The places in a record where the mapping's fields may be found, as a tree
/// of object keys and array indices from the record's top level (node 0).
///
/// [`RawObject::lookup`] tries, in an object, the whole rest of a path as
/// one key, then each split at a dot from the left (the head as a key, the
/// tail within that member's value); in an array, the index before the
/// first dot. Every place those tries can reach is a node here, and each
/// place a field may end at carries the rank of its try: the lookup's answer
/// is the lowest-ranked place present in the record, which is what the
/// single pass keeps.
#[derive(Debug, Clone)]
struct PathTree {
    nodes: Vec<PathNode>,
}

#[derive(Debug, Clone, Default)]
struct PathNode {
    /// Fields whose path may end at this value, with the rank of that try
    /// among the field's (lower is tried first).
    ends: Vec<(Field, u32)>,
    /// Members of an object here that lead on: key and node.
    keys: Vec<(Box<str>, usize)>,
    /// Elements of an array here that lead on: index and node.
    elements: Vec<(usize, usize)>,
}

impl PathTree {
    /// `None` past [`MAX_CANDIDATES`] or [`MAX_KEYS_PER_OBJECT`].
    fn compile(mapping: &FieldMapping) -> Option<PathTree> {
        let mut tree = PathTree {
            nodes: vec![PathNode::default()],
        };
        let mut candidates = 0;
        for field in Field::ALL {
            let mut ranks = Ranks {
                field,
                next: 0,
                total: &mut candidates,
            };
            tree.object_tries(0, mapping.path(field), &mut ranks)?;
        }
        if tree.nodes.iter().any(|node| node.keys.len() > MAX_KEYS_PER_OBJECT) {
            return None;
        }
        Some(tree)
    }

    /// The tries of `rest` of a path in an object at `node`, in the
    /// lookup's order. An empty rest finds nothing (the lookup of an empty
    /// path), but the member that led here is still a node: the lookup
    /// parses its object all the same.
    fn object_tries(&mut self, node: usize, rest: &str, ranks: &mut Ranks<'_>) -> Option<()> {
        if rest.is_empty() {
            return Some(());
        }
        let whole = self.member(node, rest);
        self.end(whole, ranks)?;
        for (dot, _) in rest.match_indices('.') {
            let member = self.member(node, &rest[..dot]);
            self.container_tries(member, &rest[dot + 1..], ranks)?;
        }
        Some(())
    }

    /// The tries of `rest` in a member's or element's value, an object or an
    /// array: only one of the two applies to a given record.
    fn container_tries(&mut self, node: usize, rest: &str, ranks: &mut Ranks<'_>) -> Option<()> {
        self.object_tries(node, rest, ranks)?;
        let (index, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(index) = index.parse::<usize>() {
            let element = self.element(node, index);
            if tail.is_empty() {
                self.end(element, ranks)?;
            } else {
                self.container_tries(element, tail, ranks)?;
            }
        }
        Some(())
    }

    fn end(&mut self, node: usize, ranks: &mut Ranks<'_>) -> Option<()> {
        *ranks.total += 1;
        if *ranks.total > MAX_CANDIDATES {
            return None;
        }
        self.nodes[node].ends.push((ranks.field, ranks.next));
        ranks.next += 1;
        Some(())
    }

    /// The node of member `key` of an object at `node`, added if new.
    fn member(&mut self, node: usize, key: &str) -> usize {
        if let Some(&(_, child)) = self.nodes[node].keys.iter().find(|(name, _)| **name == *key) {
            return child;
        }
        let child = self.add_node();
        self.nodes[node].keys.push((key.into(), child));
        child
    }

    /// The node of element `index` of an array at `node`, added if new.
    fn element(&mut self, node: usize, index: usize) -> usize {
        if let Some(&(_, child)) = self.nodes[node].elements.iter().find(|(at, _)| *at == index) {
            return child;
        }
        let child = self.add_node();
        self.nodes[node].elements.push((index, child));
        child
    }

    fn add_node(&mut self) -> usize {
        self.nodes.push(PathNode::default());
        self.nodes.len() - 1
    }

    /// Reads `text`, a whole record, in one pass. Fails on anything serde
    /// rejects, including values the lookup would not have parsed (such as
    /// a number out of range where a lower-ranked try ends): the caller then
    /// looks the record up path by path.
    fn walk<'a>(&self, text: &'a str) -> Result<Found<'a>, serde_json::Error> {
        let mut found = Found::default();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        NodeSeed {
            tree: self,
            node: &self.nodes[0],
            found: &mut found,
        }
        .deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(found)
    }
}

/// Numbers one field's tries in order while they are compiled, and counts
/// every field's against [`MAX_CANDIDATES`].
struct Ranks<'a> {
    field: Field,
    next: u32,
    total: &'a mut usize,
}

/// For each field (by [`Field`] order), the best-ranked value found so far
/// in a record and its rank.
#[derive(Default)]
struct Found<'a>([Option<(u32, Scalar<'a>)>; Field::ALL.len()]);

impl<'a> Found<'a> {
    fn offer(&mut self, field: Field, rank: u32, value: &Scalar<'a>) {
        let slot = &mut self.0[field as usize];
        if slot.as_ref().is_none_or(|(best, _)| rank < *best) {
            *slot = Some((rank, value.clone()));
        }
    }

    fn take(&mut self, field: Field) -> Option<Scalar<'a>> {
        self.0[field as usize].take().map(|(_, value)| value)
    }
}

/// Reads the value at one node of the tree: offers it to the fields that
/// may end there, and descends into its members or elements that lead on.
struct NodeSeed<'t, 'f, 'a> {
    tree: &'t PathTree,
    node: &'t PathNode,
    found: &'f mut Found<'a>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let NodeSeed { tree, node, found } = self;
        let value = deserializer.deserialize_any(NodeVisitor {
            tree,
            node,
            found: &mut *found,
        })?;
        for &(field, rank) in &node.ends {
            found.offer(field, rank, &value);
        }
        Ok(())
    }
}

/// The value at a node as a [`Scalar`], as the lookup reads a value at the
/// end of a path, descending on the way into the members and elements that
/// lead on.
struct NodeVisitor<'t, 'f, 'a> {
    tree: &'t PathTree,
    node: &'t PathNode,
    found: &'f mut Found<'a>,
}

impl<'t, 'de> NodeVisitor<'t, '_, 'de> {
    fn child(&mut self, node: usize) -> NodeSeed<'t, '_, 'de> {
        NodeSeed {
            tree: self.tree,
            node: &self.tree.nodes[node],
            found: &mut *self.found,
        }
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_, '_, 'de> {
    type Value = Scalar<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any json value")
    }

    scalar_visits!('de);

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let keys = &self.node.keys;
        // The lookup reads the first of equal keys: later ones are skipped.
        let mut seen = 0u64;
        while let Some(member) = map.next_key_seed(MemberSeed(keys))? {
            match member {
                Some(position) if seen & (1 << position) == 0 => {
                    seen |= 1 << position;
                    let seed = self.child(keys[position].1);
                    map.next_value_seed(seed)?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Scalar::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let elements = &self.node.elements;
        for index in 0.. {
            let more = match elements.iter().find(|(at, _)| *at == index) {
                Some(&(_, node)) => seq.next_element_seed(self.child(node))?.is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
        }
        Ok(Scalar::Array)
    }
}

/// Reads an object key as the position of that member among a node's
/// `keys`, `None` for a key off the tree; borrowed or unescaped in place,
/// never allocated.
struct MemberSeed<'t>(&'t [(Box<str>, usize)]);

impl<'de> DeserializeSeed<'de> for MemberSeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MemberSeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|(name, _)| **name == *key))
    }
}

pub(crate) fn mapped_ts(value: Scalar<'_>, format: TsFormat, path: &str) -> Result<i64, DecodeError> {
    let bad = |value: &dyn fmt::Display| DecodeError::BadTimestamp(value.to_string());
    match (format, value) {
        (TsFormat::Rfc3339, Scalar::Str(text)) => parse_ts(&text).ok_or_else(|| bad(&text)),
        (TsFormat::EpochMs, Scalar::Int(millis)) => check_ts_range(i128::from(millis)),
        (TsFormat::EpochMs, Scalar::UInt(millis)) => check_ts_range(i128::from(millis)),
        (TsFormat::EpochS, Scalar::Int(seconds)) => check_ts_range(i128::from(seconds) * 1000),
        (TsFormat::EpochS, Scalar::UInt(seconds)) => check_ts_range(i128::from(seconds) * 1000),
        (TsFormat::EpochMs, Scalar::Float(millis)) => epoch_float(millis, 1.0),
        (TsFormat::EpochS, Scalar::Float(seconds)) => epoch_float(seconds, 1000.0),
        (TsFormat::EpochMs | TsFormat::EpochS, Scalar::Str(text)) => match text.trim().parse::<f64>() {
            Ok(number) => mapped_ts(Scalar::Float(number), format, path),
            Err(_) => Err(bad(&text)),
        },
        (format, other) => Err(DecodeError::WrongType {
            field: "ts",
            detail: format!(
                "at `{path}`: expected a {format:?} timestamp, found {}",
                other.type_name()
            ),
        }),
    }
}

fn epoch_float(value: f64, to_millis: f64) -> Result<i64, DecodeError> {
    let millis = value * to_millis;
    // Compared as floats first: the range check below then cannot overflow.
    if !millis.is_finite() || millis.abs() > 1e15 {
        return Err(DecodeError::BadTimestamp(value.to_string()));
    }
    check_ts_range(millis.round() as i128)
}

/// Gateways log the client address in several shapes: one address, with
/// or without a port, or an `X-Forwarded-For` list. In a list the client is
/// the right-most entry that is not one of `trusted_proxies` (see
/// [`FieldMapping::ip`]); an unparsable entry at or right of it makes the
/// record a `bad_ip`, since nothing left of it can be trusted.
pub(crate) fn mapped_ip(text: Cow<'_, str>, trusted_proxies: &[IpNet]) -> Result<IpAddr, DecodeError> {
    let parse = |entry: &str| {
        let entry = entry.trim();
        super::parse_ip(entry).or_else(|| entry.parse::<SocketAddr>().map(|socket| socket.ip()).ok())
    };
    let mut leftmost_trusted = None;
    for entry in text.rsplit(',') {
        let Some(ip) = parse(entry) else {
            return Err(DecodeError::BadIp(text.into_owned()));
        };
        let canonical = ip.to_canonical();
        if !trusted_proxies.iter().any(|network| network.contains(&canonical)) {
            return Ok(ip);
        }
        leftmost_trusted = Some(ip);
    }
    leftmost_trusted.ok_or_else(|| DecodeError::BadIp(text.into_owned()))
}

/// `trusted_proxies` as text: `10.0.0.0/8`, `2001:db8::/32`, or a single
/// address for one host.
mod cidr_list {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(networks: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(networks.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .map(|network| network.trunc())
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| D::Error::custom(format!("`{text}` is not a network (CIDR) or an address")))
            })
            .collect()
    }
}

pub(crate) fn mapped_number(value: Scalar<'_>, field: &'static str, path: &str) -> Result<u64, DecodeError> {
    match value {
        Scalar::UInt(number) => Ok(number),
        Scalar::Str(text) => text.trim().parse().map_err(|_| not_a_number(field, path)),
        _ => Err(not_a_number(field, path)),
    }
}

pub(crate) fn not_a_number(field: &'static str, path: &str) -> DecodeError {
    DecodeError::WrongType {
        field,
        detail: format!("at `{path}`: expected a non-negative integer in range"),
    }
}

/// One JSON object with its values left unparsed. Keys borrow from the input
/// unless escaped.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// Follows a dotted path. Absent at any step gives `None`; a non-object
    /// in the middle of the path also gives `None`, as the field is not there.
    fn lookup(&self, path: &str) -> Result<Option<Scalar<'a>>, DecodeError> {
        if path.is_empty() {
            return Ok(None);
        }
        // The whole rest as one key first, so flat records with dotted keys
        // work; then each split point from the left.
        if let Some(value) = self.get(path) {
            return Ok(Some(serde_json::from_str(value.get())?));
        }
        for (dot, _) in path.match_indices('.') {
            let (head, rest) = (&path[..dot], &path[dot + 1..]);
            let Some(value) = self.get(head) else { continue };
            if let Some(found) = lookup_in(value, rest)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| *value)
    }
}

fn lookup_in<'a>(value: &'a RawValue, path: &str) -> Result<Option<Scalar<'a>>, DecodeError> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'{') => serde_json::from_str::<RawObject<'a>>(text)?.lookup(path),
        Some(b'[') => {
            let elements: Vec<&'a RawValue> = serde_json::from_str(text)?;
            let (index, rest) = path.split_once('.').unwrap_or((path, ""));
            let Some(element) = index.parse::<usize>().ok().and_then(|index| elements.get(index)) else {
                return Ok(None);
            };
            if rest.is_empty() {
                Ok(Some(serde_json::from_str(element.get())?))
            } else {
                lookup_in(element, rest)
            }
        }
        _ => Ok(None),
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawObjectVisitor;

        impl<'de> Visitor<'de> for RawObjectVisitor {
            type Value = RawObject<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a json object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    let Scalar::Str(key) = key else {
                        return Err(de::Error::custom("object key is not a string"));
                    };
                    entries.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(RawObject(entries))
            }
        }

        deserializer.deserialize_map(RawObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KONG_LIKE: &str = r#"{
        "started_at": 1772368496789,
        "client_ip": "203.0.113.9, 10.0.0.1",
        "request": {"method": "GET", "uri": "/v2/items?page=2",
                    "headers": {"x-api-key": "kg_live_abc", "user-agent": "curl/8.5"}, "id": "r-1"},
        "response": {"status": "404", "size": 1200},
        "http.route": "/v2/items",
        "hops": [{"addr": "[2001:db8::1]:443"}]
    }"#;

    fn kong_mapping() -> FieldMapping {
        toml::from_str(
            r#"
            ts = "started_at"
            ts_format = "epoch_ms"
            key_id = "request.headers.x-api-key"
            ip = "client_ip"
            trusted_proxies = ["10.0.0.0/8"]
            method = "request.method"
            endpoint = "http.route"
            status = "response.status"
            user_agent = "request.headers.user-agent"
            bytes_out = "response.size"
            request_id = "request.id"
            "#,
        )
        .expect("mapping parses")
    }

    #[test]
    fn follows_dotted_paths() {
        let event = decode_mapped(KONG_LIKE.as_bytes(), &kong_mapping()).expect("valid record");
        assert_eq!(event.ts_ms, 1_772_368_496_789);
        assert_eq!(event.key_id, "kg_live_abc");
        assert_eq!(event.ip.to_string(), "203.0.113.9");
        assert_eq!((event.method.as_ref(), event.endpoint.as_ref()), ("GET", "/v2/items"));
        assert_eq!((event.status, event.bytes_out), (404, 1200));
        assert_eq!(event.user_agent, "curl/8.5");
        assert_eq!(event.request_id.as_deref(), Some("r-1"));
        assert!(matches!(event.key_id, Cow::Borrowed(_)), "leaf strings borrow");
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "2001:db8:ff::/48", "198.51.100.7/32"]
            .iter()
            .map(|text| text.parse().expect("a network"))
            .collect();
        let client = |list: &str, trusted: &[IpNet]| mapped_ip(Cow::Borrowed(list), trusted).map(|ip| ip.to_string());
        // The client wrote 1.2.3.4 itself; our proxy saw 203.0.113.9.
        assert_eq!(
            client("1.2.3.4, 203.0.113.9, 10.0.0.1", &trusted),
            Ok("203.0.113.9".into())
        );
        assert_eq!(
            client("1.2.3.4, 203.0.113.9:5555, 198.51.100.7, 10.1.2.3", &trusted),
            Ok("203.0.113.9".into()),
            "several trusted hops, a port"
        );
        assert_eq!(
            client("203.0.113.9, [2001:db8:ff::1]:443", &trusted),
            Ok("203.0.113.9".into())
        );
        assert_eq!(
            client("10.0.0.2, 10.0.0.1", &trusted),
            Ok("10.0.0.2".into()),
            "all trusted"
        );
        assert_eq!(
            client("1.2.3.4, 203.0.113.9", &[]),
            Ok("203.0.113.9".into()),
            "no trusted list"
        );
        assert_eq!(client("203.0.113.9", &trusted), Ok("203.0.113.9".into()));
        assert_eq!(
            client("not-an-ip, 203.0.113.9, 10.0.0.1", &trusted),
            Ok("203.0.113.9".into())
        );
        assert!(matches!(
            client("203.0.113.9, garbage, 10.0.0.1", &trusted),
            Err(DecodeError::BadIp(_))
        ));
        assert!(matches!(client("", &trusted), Err(DecodeError::BadIp(_))));
    }

    #[test]
    fn trusted_proxies_parse_networks_and_addresses() {
        let mapping: FieldMapping =
            toml::from_str(r#"trusted_proxies = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]"#).expect("parses");
        let shown: Vec<String> = mapping.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);
        let err = toml::from_str::<FieldMapping>(r#"trusted_proxies = ["10.0.0.0/33"]"#).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn array_indices_and_socket_addresses() {
        let mapping = FieldMapping {
            ip: "hops.0.addr".into(),
            ..kong_mapping()
        };
        let event = decode_mapped(KONG_LIKE.as_bytes(), &mapping).expect("valid record");
        assert_eq!(event.ip.to_string(), "2001:db8::1");
    }

    #[test]
    fn defaults_fill_missing_method_and_status() {
        let record = br#"{"t":"2026-03-01T00:00:00Z","k":"key1","a":"192.0.2.1","path":"/x"}"#;
        let mapping: FieldMapping = toml::from_str(
            r#"
            ts = "t"
            key_id = "k"
            ip = "a"
            endpoint = "path"
            default_method = "POST"
            default_status = 200
            "#,
        )
        .expect("mapping parses");
        let event = decode_mapped(record, &mapping).expect("valid record");
        assert_eq!((event.method.as_ref(), event.status), ("POST", 200));
        let strict = FieldMapping {
            default_status: None,
            ..mapping
        };
        assert_eq!(decode_mapped(record, &strict), Err(DecodeError::MissingField("status")));
    }

    #[test]
    fn timestamp_formats() {
        let ts_ms = 1_772_368_496_500;
        let cases: [(TsFormat, serde_json::Value); 6] = [
            (TsFormat::Rfc3339, "2026-03-01T12:34:56.5Z".into()),
            (TsFormat::EpochMs, ts_ms.into()),
            (TsFormat::EpochMs, "1772368496500".into()),
            (TsFormat::EpochS, 1_772_368_496.5.into()),
            (TsFormat::EpochS, "1772368496.5".into()),
            (TsFormat::EpochS, (ts_ms / 1000).into()),
        ];
        for (format, value) in cases {
            let text = value.to_string();
            let scalar: Scalar<'_> = serde_json::from_str(&text).expect("scalar");
            let parsed = mapped_ts(scalar, format, "ts");
            let expected = if value.is_u64() && format == TsFormat::EpochS {
                ts_ms - 500
            } else {
                ts_ms
            };
            assert_eq!(parsed, Ok(expected), "{format:?} {value}");
        }
        assert!(matches!(
            mapped_ts(Scalar::Float(f64::NAN), TsFormat::EpochS, "ts"),
            Err(DecodeError::BadTimestamp(_))
        ));
        assert!(matches!(
            mapped_ts(Scalar::Float(1e300), TsFormat::EpochMs, "ts"),
            Err(DecodeError::BadTimestamp(_))
        ));
        assert!(matches!(
            mapped_ts(Scalar::UInt(5), TsFormat::Rfc3339, "ts"),
            Err(DecodeError::WrongType { field: "ts", .. })
        ));
    }

    #[test]
    fn problems_are_reported() {
        let mapping = kong_mapping();
        let no_key = KONG_LIKE.replace("kg_live_abc", "");
        assert_eq!(decode_mapped(no_key.as_bytes(), &mapping), Err(DecodeError::NoKey));
        let bad_ip = KONG_LIKE.replace("203.0.113.9", "unknown");
        assert!(matches!(
            decode_mapped(bad_ip.as_bytes(), &mapping),
            Err(DecodeError::BadIp(_))
        ));
        let bad_status = KONG_LIKE.replace("\"404\"", "\"not found\"");
        assert!(matches!(
            decode_mapped(bad_status.as_bytes(), &mapping),
            Err(DecodeError::WrongType { field: "status", .. })
        ));
        let huge_status = KONG_LIKE.replace("\"404\"", "70000");
        assert!(matches!(
            decode_mapped(huge_status.as_bytes(), &mapping),
            Err(DecodeError::WrongType { field: "status", .. })
        ));
        assert!(matches!(
            decode_mapped(b"[]", &mapping),
            Err(DecodeError::MalformedJson(_))
        ));
    }

    #[test]
    fn unknown_mapping_keys_are_rejected() {
        let error = toml::from_str::<FieldMapping>("key = \"x\"").expect_err("unknown field");
        assert!(error.to_string().contains("unknown field"), "{error}");
        assert_eq!(
            toml::from_str::<FieldMapping>("").expect("all defaults"),
            FieldMapping::default()
        );
    }

    use proptest::prelude::*;

    /// What the single pass finds for each field of `mapping` in `record`,
    /// against what the path-by-path lookup finds: the same values, borrowed
    /// alike. `None` when the pass leaves the record to the lookup.
    fn compare_fields(record: &str, decoder: &MappedDecoder) -> Option<()> {
        let mut found = decoder.walk(record.as_bytes())?;
        let root: RawObject<'_> = parse_record(record.as_bytes()).expect("the pass read it, so does the lookup");
        for field in Field::ALL {
            let path = decoder.mapping().path(field);
            let looked_up = root.lookup(path).expect("the pass read it, so does the lookup");
            let walked = found.take(field);
            assert_eq!(walked, looked_up, "{field:?} at {path:?} in {record}");
            let borrowed = |value: &Option<Scalar<'_>>| matches!(value, Some(Scalar::Str(Cow::Borrowed(_))));
            assert_eq!(
                borrowed(&walked),
                borrowed(&looked_up),
                "{field:?} at {path:?} in {record}"
            );
        }
        Some(())
    }

    /// The decoder's result against the path-by-path lookup's, for any bytes.
    fn assert_same_result(record: &[u8], decoder: &MappedDecoder) {
        let expected = expect_object(record).and_then(|()| decode_by_lookup(record, decoder.mapping()));
        assert_eq!(decoder.decode(record), expected, "{}", String::from_utf8_lossy(record));
    }

    /// Keys, as JSON text, that the paths of [`any_path`] split into, whole
    /// or in part, some written with escapes.
    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(&["a", "b", "c", "a.b", "b.c", "a.b.c", "0", "1", "", "a.", "+0"][..])
                .prop_map(|key| serde_json::to_string(key).expect("a key")),
            1 => Just(r#""\u0061""#.to_string()),
            1 => Just(r#""a\u002eb""#.to_string()),
        ]
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop::sample::select(
            &[
                "a", "b", "c", "a.b", "a.b.c", "b.c", "a.0", "a.1.b", "b.0.c", "a.b.0", "0", "a.", ".a", "a..b",
                "a.+0", "c.a.b", "a.0.", "a.b.c.0", "",
            ][..],
        )
        .prop_map(str::to_string)
    }

    /// Values of every JSON type, with strings that need unescaping, and
    /// text each field accepts or rejects.
    fn any_leaf() -> impl Strategy<Value = String> {
        prop::sample::select(
            &[
                "null",
                "true",
                "0",
                "200",
                "70000",
                "-7",
                "1.5",
                "1772368496500",
                "1772368496",
                "18446744073709551616",
                r#""kg_live_1""#,
                r#""  Bearer kg_2 ""#,
                r#""""#,
                r#""203.0.113.9, 10.0.0.1""#,
                r#""[2001:db8::1]:443""#,
                r#""example.com""#,
                r#""2026-03-01T12:00:00Z""#,
                r#""1772368496.5""#,
                r#""404""#,
                r#""GET""#,
                r#""/v1/a\"b\u00e9""#,
                r#""k\u0041\n""#,
            ][..],
        )
        .prop_map(str::to_string)
    }

    fn object(members: Vec<(String, String)>) -> String {
        let members: Vec<String> = members.iter().map(|(key, value)| format!("{key}:{value}")).collect();
        format!("{{{}}}", members.join(","))
    }

    fn any_value() -> impl Strategy<Value = String> {
        any_leaf().prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec((any_key(), inner.clone()), 0..5).prop_map(object),
                prop::collection::vec(inner, 0..4).prop_map(|elements| format!("[{}]", elements.join(","))),
            ]
        })
    }

    fn any_record() -> impl Strategy<Value = String> {
        prop::collection::vec((any_key(), any_value()), 0..7).prop_map(object)
    }

    fn any_mapping() -> impl Strategy<Value = FieldMapping> {
        (
            prop::collection::vec(any_path(), 9),
            prop::sample::select(&[TsFormat::Rfc3339, TsFormat::EpochMs, TsFormat::EpochS][..]),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(paths, ts_format, default_method, default_status, trusted)| FieldMapping {
                    ts: paths[0].clone(),
                    ts_format,
                    key_id: paths[1].clone(),
                    ip: paths[2].clone(),
                    trusted_proxies: if trusted {
                        vec!["10.0.0.0/8".parse().expect("a network")]
                    } else {
                        Vec::new()
                    },
                    method: paths[3].clone(),
                    default_method: default_method.then(|| "POST".to_string()),
                    endpoint: paths[4].clone(),
                    status: paths[5].clone(),
                    default_status: default_status.then_some(200),
                    user_agent: paths[6].clone(),
                    bytes_out: paths[7].clone(),
                    request_id: paths[8].clone(),
                },
            )
    }

    /// A Kong-like record whose fields are each written nested, flat with
    /// dots in the key, or half and half, absent, or with a wrong value.
    fn gateway_record() -> impl Strategy<Value = String> {
        let field = |path: &'static str, good: &'static [&'static str]| {
            let value = prop_oneof![9 => prop::sample::select(good).prop_map(str::to_string), 1 => any_leaf()];
            // Which dots of the path separate keys.
            let splits = prop::collection::vec(any::<bool>(), path.matches('.').count());
            (value, splits, 0..16u8).prop_map(move |(value, splits, absent)| {
                let mut keys = vec![String::new()];
                for (index, part) in path.split('.').enumerate() {
                    if index > 0 {
                        if splits[index - 1] {
                            keys.push(String::new());
                        } else {
                            keys.last_mut().expect("a key").push('.');
                        }
                    }
                    keys.last_mut().expect("a key").push_str(part);
                }
                (absent != 0).then_some((keys, value))
            })
        };
        let fields = (
            field("started_at", &["1772368496789", r#""1772368496789""#]),
            field(
                "request.headers.x-api-key",
                &[r#""kg_live_abc""#, r#""Bearer kg_\u0041""#],
            ),
            field("client_ip", &[r#""203.0.113.9, 10.0.0.1""#, r#""[2001:db8::1]:443""#]),
            field("request.method", &[r#""GET""#]),
            field("http.route", &[r#""/v2/items""#, r#""/v2/\"q\"""#]),
            field("response.status", &["404", r#""200""#]),
            field("request.headers.user-agent", &[r#""curl/8.5""#]),
            field("response.size", &["1200"]),
            field("request.id", &[r#""r-1""#]),
        );
        (fields, any::<bool>()).prop_map(|((f0, f1, f2, f3, f4, f5, f6, f7, f8), noise)| {
            let mut root = Tree::default();
            for (keys, value) in [f0, f1, f2, f3, f4, f5, f6, f7, f8].into_iter().flatten() {
                root.insert(&keys, value);
            }
            if noise {
                root.insert(
                    &["latencies".to_string()],
                    r#"{"proxy":3,"kong":[1,{"a":2}]}"#.to_string(),
                );
            }
            root.to_json()
        })
    }

    /// A JSON object built member by member, merging the objects of a
    /// shared key prefix.
    #[derive(Default)]
    struct Tree(Vec<(String, Member)>);

    enum Member {
        Object(Tree),
        Value(String),
    }

    impl Tree {
        fn insert(&mut self, keys: &[String], value: String) {
            let (key, rest) = keys.split_first().expect("a key");
            if rest.is_empty() {
                self.0.push((key.clone(), Member::Value(value)));
                return;
            }
            let position = self
                .0
                .iter()
                .position(|(name, member)| name == key && matches!(member, Member::Object(_)))
                .unwrap_or_else(|| {
                    self.0.push((key.clone(), Member::Object(Tree::default())));
                    self.0.len() - 1
                });
            if let Member::Object(tree) = &mut self.0[position].1 {
                tree.insert(rest, value);
            }
        }

        fn to_json(&self) -> String {
            object(
                self.0
                    .iter()
                    .map(|(key, member)| {
                        let value = match member {
                            Member::Object(tree) => tree.to_json(),
                            Member::Value(value) => value.clone(),
                        };
                        (serde_json::to_string(key).expect("a key"), value)
                    })
                    .collect(),
            )
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any record under any mapping of the paths the records' keys
        /// split into: the single pass reads every field as the lookup does.
        #[test]
        fn single_pass_finds_what_lookup_finds(record in any_record(), mapping in any_mapping()) {
            let decoder = MappedDecoder::new(mapping);
            prop_assert!(compare_fields(&record, &decoder).is_some(), "the pass read {record}");
            assert_same_result(record.as_bytes(), &decoder);
        }

        /// The same records cut short, with a byte that is not UTF-8, or
        /// with a number out of range or a lone surrogate: the decoder
        /// gives the lookup's result, rejection reason and message.
        #[test]
        fn damaged_records_get_the_lookups_result(
            record in any_record(),
            mapping in any_mapping(),
            cut in any::<prop::sample::Index>(),
            damage in 0..4u8,
        ) {
            let decoder = MappedDecoder::new(mapping);
            let mut bytes = record.into_bytes();
            let at = cut.index(bytes.len() + 1);
            match damage {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, 0xff),
                2 => bytes = String::from_utf8_lossy(&bytes).replace("200", "1e999").into_bytes(),
                _ => bytes = String::from_utf8_lossy(&bytes).replace(r#""b""#, r#""\ud800""#).into_bytes(),
            }
            assert_same_result(&bytes, &decoder);
        }

        /// Kong-like records, mostly valid, under the Kong mapping: the same
        /// events and the same rejections.
        #[test]
        fn gateway_records_decode_as_by_lookup(record in gateway_record()) {
            let decoder = MappedDecoder::new(kong_mapping());
            prop_assert!(compare_fields(&record, &decoder).is_some(), "the pass read {record}");
            assert_same_result(record.as_bytes(), &decoder);
        }
    }

    #[test]
    fn gateway_records_mostly_decode() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let decoder = MappedDecoder::new(kong_mapping());
        let mut runner = TestRunner::deterministic();
        let decoded = (0..500)
            .filter(|_| {
                let record = gateway_record().new_tree(&mut runner).expect("a record").current();
                decoder.decode(record.as_bytes()).is_ok()
            })
            .count();
        assert!(
            decoded > 75,
            "only {decoded} of 500 decoded: the property above tests too few events"
        );
    }

    #[test]
    fn equal_keys_dotted_keys_and_indices_follow_the_lookup() {
        let mapping = FieldMapping {
            key_id: "a.b".into(),
            ip: "list.1".into(),
            ..kong_mapping()
        };
        let decoder = MappedDecoder::new(mapping);
        for record in [
            r#"{"a":{"b":"nested"},"a.b":"flat"}"#,
            r#"{"a.b":null,"a":{"b":"nested"}}"#,
            r#"{"a":{"b":"first"},"a":{"b":"second"}}"#,
            r#"{"a":{"x":1},"a":{"b":"second"}}"#,
            r#"{"a":{"b":"x","b":"y"}}"#,
            r#"{"a":[{"b":"in array"}],"list":["0",{"x":1},"2"]}"#,
            r#"{"list":{"1":"object key"},"a":{"b.c":1,"b":{"c":2}}}"#,
        ] {
            compare_fields(record, &decoder).expect("the pass reads it");
            assert_same_result(record.as_bytes(), &decoder);
        }
    }

    #[test]
    fn too_many_candidates_fall_back_to_the_lookup() {
        let dotted = vec!["k"; 20].join(".");
        let decoder = MappedDecoder::new(FieldMapping {
            key_id: dotted.clone(),
            ..FieldMapping::default()
        });
        assert!(decoder.tree.is_none(), "2^19 ways to split the path");
        let record = format!(
            r#"{{"{dotted}":"kg_1","ts":"2026-03-01T00:00:00Z","ip":"192.0.2.1","method":"GET","endpoint":"/","status":200}}"#
        );
        assert_same_result(record.as_bytes(), &decoder);
        assert_eq!(
            decoder.decode(record.as_bytes()).map(|event| event.key_id),
            Ok("kg_1".into())
        );
    }
}
