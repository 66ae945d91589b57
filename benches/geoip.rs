//! GeoIP lookup throughput, uncached and through the per-engine cache, over
//! address mixes shaped like API traffic, against ~2k-network City and ASN
//! databases of the test world's synthetic networks.

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keywatch::enrich::mmdb_build::{AsnRecord, CityRecord, build_asn_db, build_city_db};
use keywatch::enrich::test_world::{synthetic_host, synthetic_world};
use keywatch::enrich::{GeoCache, GeoIp};
use support::BenchRng;

const IPV4_NETWORKS: usize = 1900;
const IPV6_NETWORKS: usize = 100;
const BATCH: usize = 50_000;

fn ipv6_network_address(index: usize, host: u64) -> Ipv6Addr {
    // 2a0c::/16 and up, one /32 per index: ordinary global unicast space.
    let prefix = (0x2a0c_u128 << 112) | ((index as u128) << 96);
    Ipv6Addr::from(prefix | u128::from(host))
}

fn build_geo() -> GeoIp {
    let (mut cities, mut asns) = synthetic_world(IPV4_NETWORKS);
    for index in 0..IPV6_NETWORKS {
        let network = ipnet::IpNet::new(IpAddr::V6(ipv6_network_address(index, 0)), 32).expect("valid /32");
        let template = cities[index].clone();
        cities.push(CityRecord { network, ..template });
        asns.push(AsnRecord {
            network,
            asn: 200_000 + index as u32,
            organization: format!("Synthetic V6 {index}"),
        });
    }
    let city = build_city_db(&cities).expect("city db builds");
    let asn = build_asn_db(&asns).expect("asn db builds");
    GeoIp::from_bytes(Some(city), Some(asn)).expect("built dbs open")
}

/// Every address drawn independently from the whole database: the worst
/// case for a cache, and the raw cost of a tree walk plus decode.
fn spread_addresses(sequence: &mut BenchRng) -> Vec<IpAddr> {
    (0..BATCH)
        .map(|_| synthetic_host(sequence.below(IPV4_NETWORKS), sequence.below(256) as u8))
        .collect()
}

/// API traffic: most requests come from a few thousand clients, heavy ones
/// far more often than light ones; some IPv6, some private (internal
/// callers), some public addresses the database does not know.
fn traffic_addresses(sequence: &mut BenchRng) -> Vec<IpAddr> {
    let clients: Vec<IpAddr> = (0..3000)
        .map(|_| {
            if sequence.below(10) == 0 {
                IpAddr::V6(ipv6_network_address(
                    sequence.below(IPV6_NETWORKS),
                    sequence.next_u64() & 0xffff_ffff,
                ))
            } else {
                synthetic_host(sequence.below(IPV4_NETWORKS), sequence.below(256) as u8)
            }
        })
        .collect();
    (0..BATCH)
        .map(|_| match sequence.below(100) {
            0..=4 => IpAddr::V4(Ipv4Addr::new(
                10,
                sequence.below(256) as u8,
                sequence.below(256) as u8,
                7,
            )),
            5..=7 => IpAddr::V4(Ipv4Addr::new(
                203,
                7,
                sequence.below(256) as u8,
                sequence.below(256) as u8,
            )),
            _ => {
                // Squaring a uniform draw skews picks towards the front:
                // a few heavy clients and a long tail of light ones.
                clients[sequence.skewed_below(clients.len(), 2)]
            }
        })
        .collect()
}

fn bench_lookups(criterion: &mut Criterion) {
    let geo = build_geo();
    let mut sequence = BenchRng::seeded(7);
    let spread = spread_addresses(&mut sequence);
    let traffic = traffic_addresses(&mut sequence);

    let mut group = criterion.benchmark_group("geoip");
    group.throughput(Throughput::Elements(BATCH as u64));
    // ~47k distinct addresses in `spread` overflow a 16k cache, so that case
    // measures what misses and clears cost; `traffic` fits its cache.
    for (mix_name, addresses, cache_capacity) in [("spread", &spread, 16_384), ("traffic", &traffic, 65_536)] {
        group.bench_function(format!("uncached/{mix_name}"), |bencher| {
            bencher.iter(|| {
                let mut asn_sum = 0_u64;
                for &address in addresses {
                    asn_sum += u64::from(geo.lookup(black_box(address)).asn);
                }
                asn_sum
            })
        });
        // The cache lives across iterations, as it does across an engine's
        // batches: this is the steady state, not a cold start.
        let mut cache = GeoCache::new(cache_capacity);
        group.bench_function(format!("cached/{mix_name}"), |bencher| {
            bencher.iter(|| {
                let mut asn_sum = 0_u64;
                for &address in addresses {
                    asn_sum += u64::from(cache.lookup(&geo, black_box(address)).asn);
                }
                asn_sum
            })
        });
    }
    group.finish();

    let mut names_group = criterion.benchmark_group("geoip_names");
    let evidence: Vec<IpAddr> = traffic.iter().copied().take(1000).collect();
    names_group.throughput(Throughput::Elements(evidence.len() as u64));
    names_group.bench_function("names/traffic", |bencher| {
        bencher.iter(|| {
            evidence
                .iter()
                .filter(|&&address| geo.names(black_box(address)).city.is_some())
                .count()
        })
    });
    names_group.finish();
}

criterion_group!(benches, bench_lookups);
criterion_main!(benches);
