//! What the synthetic API looks like: services with REST endpoints, the
//! sensitive and data-export endpoints no ordinary key touches, client
//! user-agents, key id formats, and filling concrete ids into paths.

use std::fmt::Write as _;

use super::random::{GenRng, between, chance, index, pick};

/// One endpoint with placeholders: `{n}` a numeric id, `{uuid}`, `{obj}` an
/// object name, `{p:xx}` a prefixed id such as `cus_...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointTemplate {
    pub method: &'static str,
    pub path: String,
    /// Typical response size in bytes.
    pub typical_bytes: u32,
}

/// A family of endpoints one key's caller uses a subset of.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    pub endpoints: Vec<EndpointTemplate>,
    /// SDK user-agent stems; a version is appended per key.
    pub sdk_agents: &'static [&'static str],
}

/// (resource, id placeholder): each gets list, get, create, update and delete.
type Resources = &'static [(&'static str, &'static str)];

struct ServiceSpec {
    name: &'static str,
    resources: Resources,
    /// "METHOD path bytes" lines for endpoints beyond the CRUD five.
    extras: &'static [&'static str],
    sdk_agents: &'static [&'static str],
}

const SERVICE_SPECS: &[ServiceSpec] = &[
    ServiceSpec {
        name: "payments",
        resources: &[
            ("charges", "{p:ch}"),
            ("customers", "{p:cus}"),
            ("refunds", "{p:re}"),
            ("payouts", "{p:po}"),
            ("invoices", "{p:in}"),
            ("subscriptions", "{p:sub}"),
            ("payment_intents", "{p:pi}"),
            ("disputes", "{p:dp}"),
        ],
        extras: &[
            "POST /v1/payment_intents/{p:pi}/confirm 1400",
            "POST /v1/payment_intents/{p:pi}/capture 1400",
            "GET /v1/balance 600",
            "GET /v1/balance_transactions 5200",
            "POST /v1/invoices/{p:in}/pay 1800",
            "GET /v1/customers/{p:cus}/payment_methods 2400",
        ],
        sdk_agents: &["stripe-python", "stripe-node", "stripe-go", "stripe-java"],
    },
    ServiceSpec {
        name: "commerce",
        resources: &[
            ("orders", "{n}"),
            ("products", "{n}"),
            ("carts", "{uuid}"),
            ("shipments", "{n}"),
            ("customers", "{n}"),
            ("coupons", "{p:cpn}"),
            ("returns", "{n}"),
            ("warehouses", "{n}"),
        ],
        extras: &[
            "GET /v1/orders/{n}/items 2600",
            "POST /v1/orders/{n}/cancel 900",
            "GET /v1/products/{n}/inventory 500",
            "PUT /v1/products/{n}/inventory 500",
            "GET /v1/shipments/{n}/tracking 1500",
            "POST /v1/checkout 2200",
            "POST /v1/carts/{uuid}/items 1100",
        ],
        sdk_agents: &["shopkit-python", "shopkit-ruby", "shopkit-php", "shopkit-node"],
    },
    ServiceSpec {
        name: "storage",
        resources: &[
            ("buckets", "{p:bkt}"),
            ("volumes", "{p:vol}"),
            ("snapshots", "{uuid}"),
            ("lifecycle-rules", "{n}"),
            ("access-points", "{p:ap}"),
            ("replication-rules", "{n}"),
        ],
        extras: &[
            "GET /v1/buckets/{p:bkt}/objects 8200",
            "GET /v1/buckets/{p:bkt}/objects/{obj} 48000",
            "PUT /v1/buckets/{p:bkt}/objects/{obj} 300",
            "DELETE /v1/buckets/{p:bkt}/objects/{obj} 120",
            "HEAD /v1/buckets/{p:bkt}/objects/{obj} 0",
            "POST /v1/buckets/{p:bkt}/uploads 400",
            "PUT /v1/uploads/{uuid}/parts/{n} 200",
            "POST /v1/uploads/{uuid}/complete 400",
            "GET /v1/buckets/{p:bkt}/usage 700",
            "POST /v1/snapshots/{uuid}/restore 600",
        ],
        sdk_agents: &["aws-sdk-go-v2", "Boto3", "aws-sdk-java", "aws-sdk-js"],
    },
    ServiceSpec {
        name: "messaging",
        resources: &[
            ("messages", "{p:SM}"),
            ("conversations", "{uuid}"),
            ("contacts", "{n}"),
            ("templates", "{n}"),
            ("webhooks", "{p:wh}"),
            ("phone-numbers", "{p:PN}"),
            ("campaigns", "{n}"),
            ("lists", "{n}"),
        ],
        extras: &[
            "POST /v1/messages/{p:SM}/feedback 300",
            "GET /v1/conversations/{uuid}/messages 6400",
            "POST /v1/email/send 450",
            "GET /v1/email/events 7200",
            "POST /v1/sms/send 450",
            "GET /v1/usage 900",
        ],
        sdk_agents: &["msgkit-python", "msgkit-node", "msgkit-java", "msgkit-go"],
    },
    ServiceSpec {
        name: "analytics",
        resources: &[
            ("dashboards", "{n}"),
            ("reports", "{n}"),
            ("queries", "{uuid}"),
            ("segments", "{n}"),
            ("funnels", "{n}"),
            ("cohorts", "{n}"),
            ("annotations", "{n}"),
        ],
        extras: &[
            "POST /v1/track 60",
            "POST /v1/batch 80",
            "POST /v1/identify 60",
            "GET /v1/queries/{uuid}/results 22000",
            "POST /v1/queries/{uuid}/run 500",
            "GET /v1/events/{uuid} 900",
            "GET /v1/properties 3000",
        ],
        sdk_agents: &[
            "analytics-python",
            "analytics-node",
            "analytics-go",
            "analytics-android",
        ],
    },
    ServiceSpec {
        name: "maps",
        resources: &[
            ("places", "{p:pl}"),
            ("indexes", "{p:idx}"),
            ("documents", "{uuid}"),
            ("saved-searches", "{n}"),
            ("routes", "{uuid}"),
            ("geofences", "{n}"),
        ],
        extras: &[
            "GET /v1/geocode 1800",
            "GET /v1/reverse-geocode 1600",
            "GET /v1/directions 9000",
            "GET /v1/distance-matrix 4200",
            "GET /v1/search 5200",
            "GET /v1/autocomplete 1400",
            "GET /v1/timezone 300",
            "GET /v1/elevation 400",
            "GET /v1/places/{p:pl}/photos 3000",
            "POST /v1/indexes/{p:idx}/documents 500",
        ],
        sdk_agents: &["mapkit-js", "mapkit-python", "mapkit-ios", "mapkit-kotlin"],
    },
];

/// Endpoints an ordinary key never calls: first use of these is what
/// privilege probing looks like.
const SENSITIVE_ENDPOINTS: &[&str] = &[
    "GET /v1/admin/users 4000",
    "GET /v1/admin/audit-log 9000",
    "POST /v1/admin/users/{n}/roles 300",
    "GET /v1/iam/roles 2500",
    "GET /v1/iam/policies 3500",
    "GET /v1/iam/policies/{p:pol} 1200",
    "PUT /v1/iam/policies/{p:pol} 300",
    "GET /v1/api-keys 1800",
    "POST /v1/api-keys 400",
    "DELETE /v1/api-keys/{p:key} 120",
    "GET /v1/secrets 1600",
    "GET /v1/secrets/{p:sec} 400",
    "GET /v1/org/members 3000",
    "POST /v1/org/members/{n}/role 300",
    "GET /v1/billing/payment-methods 900",
    "GET /v1/sso/config 700",
];

/// Bulk data export endpoints, with large responses.
const EXPORT_ENDPOINTS: &[&str] = &[
    "POST /v1/exports 400",
    "GET /v1/exports/{uuid} 600",
    "GET /v1/exports/{uuid}/download 8000000",
    "GET /v1/reports/bulk 2500000",
    "GET /v1/customers/export 4000000",
    "POST /v1/data/dump 6000000",
];

/// Endpoints enumeration hammers: account lookups by sequential id and the
/// token endpoint.
const ENUMERATION_ENDPOINTS: &[&str] = &[
    "GET /v1/accounts/{n} 800",
    "POST /v1/auth/token 200",
    "GET /v1/users/{n} 700",
    "GET /v1/tenants/{n} 600",
];

/// Clients attackers typically script with.
pub const ATTACKER_AGENTS: &[&str] = &[
    "python-requests/2.31.0",
    "curl/8.4.0",
    "Go-http-client/1.1",
    "python-httpx/0.26.0",
    "aiohttp/3.9.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
];

/// Generic clients people and scripts use next to the SDKs.
const GENERIC_AGENTS: &[&str] = &[
    "okhttp",
    "python-requests",
    "Go-http-client",
    "axios",
    "node-fetch",
    "Apache-HttpClient",
    "PostmanRuntime",
    "Guzzle",
];

fn parse_line(line: &str) -> Option<EndpointTemplate> {
    let mut parts = line.split_ascii_whitespace();
    let method = parts.next()?;
    let path = parts.next()?;
    let typical_bytes = parts.next()?.parse().ok()?;
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        _ => return None,
    };
    Some(EndpointTemplate {
        method,
        path: path.to_string(),
        typical_bytes,
    })
}

fn parse_lines(lines: &[&str]) -> Vec<EndpointTemplate> {
    lines.iter().filter_map(|line| parse_line(line)).collect()
}

/// All services with their endpoints expanded.
pub fn services() -> Vec<Service> {
    SERVICE_SPECS
        .iter()
        .map(|spec| {
            let mut endpoints = Vec::new();
            for (resource, placeholder) in spec.resources {
                let collection = format!("/v1/{resource}");
                let item = format!("/v1/{resource}/{placeholder}");
                endpoints.push(EndpointTemplate {
                    method: "GET",
                    path: collection.clone(),
                    typical_bytes: 5200,
                });
                endpoints.push(EndpointTemplate {
                    method: "GET",
                    path: item.clone(),
                    typical_bytes: 1300,
                });
                endpoints.push(EndpointTemplate {
                    method: "POST",
                    path: collection,
                    typical_bytes: 1100,
                });
                endpoints.push(EndpointTemplate {
                    method: "PATCH",
                    path: item.clone(),
                    typical_bytes: 1100,
                });
                endpoints.push(EndpointTemplate {
                    method: "DELETE",
                    path: item,
                    typical_bytes: 120,
                });
            }
            endpoints.extend(parse_lines(spec.extras));
            Service {
                name: spec.name,
                endpoints,
                sdk_agents: spec.sdk_agents,
            }
        })
        .collect()
}

pub fn sensitive_endpoints() -> Vec<EndpointTemplate> {
    parse_lines(SENSITIVE_ENDPOINTS)
}

pub fn export_endpoints() -> Vec<EndpointTemplate> {
    parse_lines(EXPORT_ENDPOINTS)
}

pub fn enumeration_endpoints() -> Vec<EndpointTemplate> {
    parse_lines(ENUMERATION_ENDPOINTS)
}

/// A version-stamped client user-agent for one key: mostly the service's
/// SDK, sometimes a generic HTTP client.
pub fn client_agent(rng: &mut GenRng, service: &Service) -> String {
    let version = format!(
        "{}.{}.{}",
        between(rng, 1, 14),
        between(rng, 0, 40),
        between(rng, 0, 12)
    );
    if chance(rng, 0.75) {
        let stem = pick(rng, service.sdk_agents);
        let runtime = runtime_of(stem);
        format!("{stem}/{version} {runtime} os/linux")
    } else {
        format!("{}/{version}", pick(rng, GENERIC_AGENTS))
    }
}

/// The runtime an SDK reports beside its own version, matching the SDK's
/// language so the string reads like a real client's.
fn runtime_of(sdk: &str) -> &'static str {
    let language = sdk.rsplit('-').next().unwrap_or(sdk);
    match language {
        "python" | "Boto3" => "lang/python#3.11.7",
        "go" | "v2" => "lang/go#1.21.6",
        "node" | "js" => "lang/js node/20.11.0",
        "java" | "kotlin" | "android" => "lang/java#17.0.9",
        "ruby" => "lang/ruby#3.2.2",
        "php" => "lang/php#8.2.14",
        "ios" => "lang/swift#5.9",
        _ => "lang/unknown",
    }
}

/// A key id in one of the common static-key formats.
pub fn key_id(rng: &mut GenRng) -> String {
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const TOKEN: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";
    let draw = |rng: &mut GenRng, alphabet: &[u8], count: usize| -> String {
        (0..count).map(|_| char::from(*pick(rng, alphabet))).collect()
    };
    match index(rng, 10) {
        0..=3 => format!("AKIA{}", draw(rng, BASE32, 16)),
        4..=7 => format!("sk_live_{}", draw(rng, BASE62, 24)),
        _ => format!("glpat-{}", draw(rng, TOKEN, 20)),
    }
}

/// Fills the placeholders of `template` with concrete ids. `id_space` bounds
/// numeric ids so a key revisits the same records, as real callers do;
/// `sequential_from` (when set) makes numeric ids count up, as an
/// enumeration does.
pub fn fill_path(rng: &mut GenRng, template: &str, id_space: u64, sequential_from: Option<u64>) -> String {
    let mut path = String::with_capacity(template.len() + 24);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let Some(close_offset) = rest[open..].find('}') else {
            break;
        };
        let placeholder = &rest[open + 1..open + close_offset];
        rest = &rest[open + close_offset + 1..];
        match placeholder {
            "n" => {
                let id = match sequential_from {
                    Some(first) => first,
                    None => 10_000 + between(rng, 0, id_space.max(1)) * 37,
                };
                let _ = write!(path, "{id}");
            }
            "uuid" => {
                let high = rng_u64(rng);
                let low = rng_u64(rng);
                let _ = write!(
                    path,
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    high >> 32,
                    (high >> 16) & 0xffff,
                    high & 0x0fff,
                    0x8000 | (low >> 48 & 0x3fff),
                    low & 0xffff_ffff_ffff
                );
            }
            "obj" => {
                let _ = write!(
                    path,
                    "{}_{:08x}.{}",
                    pick(rng, &["img", "doc", "export", "backup", "log"]),
                    between(rng, 0, id_space.max(1)).wrapping_mul(2_654_435_761) & 0xffff_ffff,
                    pick(rng, &["jpg", "pdf", "json", "gz", "csv"])
                );
            }
            other => {
                let prefix = other.strip_prefix("p:").unwrap_or(other);
                const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
                // Bounded pool: derive the id from a small number so repeats happen.
                let mut seed = between(rng, 0, id_space.max(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995;
                path.push_str(prefix);
                path.push('_');
                for _ in 0..14 {
                    path.push(char::from(BASE62[(seed % 62) as usize]));
                    seed = (seed / 62).wrapping_add(seed.rotate_left(17));
                }
            }
        }
    }
    path.push_str(rest);
    path
}

fn rng_u64(rng: &mut GenRng) -> u64 {
    use rand::Rng;
    rng.random::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::random::stream;

    #[test]
    fn services_have_enough_endpoints_for_the_largest_mix() {
        for service in services() {
            assert!(
                service.endpoints.len() >= 36,
                "{} has {}",
                service.name,
                service.endpoints.len()
            );
        }
        assert_eq!(sensitive_endpoints().len(), SENSITIVE_ENDPOINTS.len());
        assert_eq!(export_endpoints().len(), EXPORT_ENDPOINTS.len());
    }

    #[test]
    fn ordinary_endpoints_never_overlap_sensitive_or_export_ones() {
        let special: Vec<String> = sensitive_endpoints()
            .into_iter()
            .chain(export_endpoints())
            .map(|endpoint| endpoint.path)
            .collect();
        for service in services() {
            for endpoint in service.endpoints {
                assert!(!special.contains(&endpoint.path), "{}", endpoint.path);
            }
        }
    }

    #[test]
    fn filled_paths_have_no_placeholders_left() {
        let mut rng = stream(1, 1, 1);
        for template in [
            "/v1/orders/{n}/items",
            "/v1/carts/{uuid}",
            "/v1/buckets/{p:bkt}/objects/{obj}",
        ] {
            let path = fill_path(&mut rng, template, 100, None);
            assert!(!path.contains('{') && !path.contains('}'), "{path}");
        }
        assert_eq!(
            fill_path(&mut rng, "/v1/accounts/{n}", 100, Some(4242)),
            "/v1/accounts/4242"
        );
        assert!(fill_path(&mut rng, "/v1/customers/{p:cus}", 100, None).starts_with("/v1/customers/cus_"));
    }

    #[test]
    fn every_sdk_has_a_known_runtime() {
        for service in services() {
            for sdk in service.sdk_agents {
                assert_ne!(runtime_of(sdk), "lang/unknown", "{sdk}");
            }
        }
    }

    #[test]
    fn key_ids_look_like_static_keys() {
        let mut rng = stream(1, 1, 1);
        for _ in 0..50 {
            let key = key_id(&mut rng);
            assert!(
                (key.starts_with("AKIA") && key.len() == 20)
                    || (key.starts_with("sk_live_") && key.len() == 32)
                    || (key.starts_with("glpat-") && key.len() == 26),
                "{key}"
            );
        }
    }
}
