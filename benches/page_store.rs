//! Micro-benchmarks of the page store: lookup (hit, range hit and miss),
//! insert, and insert with eviction. Run with `cargo bench --bench page_store`.

use std::hint::black_box;
use std::time::Duration;

use cachalot::cache::{PageKey, PageStoreConfig, VolumeCache};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const PAGE: usize = 1 << 20;

fn key(index: u64) -> PageKey {
    PageKey {
        source: "file:///bench".into(),
        path: "data/file.bin".into(),
        version: "v1".into(),
        index,
    }
}

fn page_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = vec![0x5au8; PAGE];
    let store = VolumeCache::open(
        PageStoreConfig::new(dir.path().to_path_buf(), 1 << 30, PAGE as u64),
        "file:///bench",
    )
    .expect("open store");
    store.wait_index_ready(Duration::from_secs(10));
    for i in 0..64 {
        store.put(&key(i), &data);
    }

    let mut group = c.benchmark_group("page_store");
    group.throughput(Throughput::Bytes(PAGE as u64));
    group.bench_function("get_hit_1MiB", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 1) % 64;
            black_box(store.get(&key(i)))
        })
    });
    group.finish();

    // A random 4 KiB read of a stored page: only the header and the
    // checksum blocks it touches are read and verified.
    let mut group = c.benchmark_group("page_store");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("get_range_hit_4KiB", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 1) % 64;
            let offset = (i * 7919 * 4096) % PAGE as u64;
            black_box(store.get_range(&key(i), offset, 4096))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("page_store");
    group.throughput(Throughput::Bytes(PAGE as u64));
    group.bench_function("put_1MiB", |b| {
        let mut i = 1000u64;
        b.iter(|| {
            i += 1;
            store.put(&key(i % 256 + 1000), black_box(&data))
        })
    });
    group.finish();

    c.bench_function("page_store/get_miss", |b| {
        b.iter(|| black_box(store.get(&key(u64::MAX))))
    });

    // A quota of 32 pages: every insert past it evicts LRU pages.
    let small_dir = tempfile::tempdir().expect("temp dir");
    let small = VolumeCache::open(
        PageStoreConfig::new(
            small_dir.path().to_path_buf(),
            32 * (PAGE as u64 + 256),
            PAGE as u64,
        ),
        "file:///bench",
    )
    .expect("open store");
    small.wait_index_ready(Duration::from_secs(10));
    c.bench_function("page_store/put_with_eviction_1MiB", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            small.put(&key(i), black_box(&data))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = page_store
}
criterion_main!(benches);
