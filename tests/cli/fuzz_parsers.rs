//! Property tests (proptest) for every parser reachable from the public API, and for
//! the page store reading page files it did not write.
//!
//! Case counts are capped so the whole file runs in well under a minute;
//! `CACHALOT_LONG=1` multiplies them by 20. Failures print a minimal counterexample
//! (proptest shrinks) and are persisted by proptest as usual.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use cachalot::backend::{is_temp_name, BackendPath, Source};
use cachalot::cache::{PageKey, PageStoreConfig, VolumeCache};
use cachalot::cli::{parse_duration, parse_size};
use proptest::prelude::*;

fn cases(n: u32) -> ProptestConfig {
    let long = std::env::var("CACHALOT_LONG").is_ok_and(|v| v == "1");
    ProptestConfig {
        cases: if long { n * 20 } else { n },
        // no persistence files in the source tree
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// parse_size
// ---------------------------------------------------------------------------------------

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Random upper/lower case of `s`.
fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Strings close to valid sizes (digits, spaces, unit-ish letters) and arbitrary ones.
fn size_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \t]{0,2}[0-9]{0,22}[ \t]{0,2}[a-zA-Z]{0,4}[ \t]{0,2}",
        "[-+]?[0-9]{1,5}(\\.[0-9]{1,3})?[kKmMgGtT]?[iI]?[bB]?",
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn parse_size_never_panics_and_accepts_only_number_unit(s in size_like()) {
        if let Ok(v) = parse_size(&s) {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            prop_assert!(!digits.is_empty(), "{s:?} accepted without digits");
            let unit = unit.trim().to_ascii_lowercase();
            let mult = UNITS.iter().find(|u| u.0 == unit).map(|u| u.1);
            prop_assert!(mult.is_some(), "{s:?} accepted with unit {unit:?}");
            let n: u64 = digits.parse().unwrap();
            prop_assert_eq!(Some(v), n.checked_mul(mult.unwrap()));
        }
    }

    #[test]
    fn parse_size_round_trips(n in any::<u64>(), small in 0u64..1_000_000, unit in 0..UNITS.len(),
                              mask in any::<u64>(), space in "[ ]{0,2}", pad in "[ \t]{0,2}") {
        for n in [n, small] {
            let (u, mult) = UNITS[unit];
            let text = format!("{pad}{n}{space}{}{pad}", recase(u, mask));
            match n.checked_mul(mult) {
                Some(v) => prop_assert_eq!(parse_size(&text), Ok(v), "{:?}", text),
                None => {
                    let e = parse_size(&text).unwrap_err();
                    prop_assert!(e.contains("too large"), "{text:?}: {e}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// parse_duration
// ---------------------------------------------------------------------------------------

fn duration_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ ]{0,2}[0-9]{0,25}[ ]{0,2}(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days|x|)[ ]{0,2}",
        "([0-9]{1,20}(ns|ms|s|m|h|d) ?){1,4}",
        "-?[0-9]{1,5}\\.?[0-9]{0,3}(s|ms)?",
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn parse_duration_never_panics(s in duration_like()) {
        let _ = parse_duration(&s);
    }

    #[test]
    fn parse_duration_bare_numbers_are_seconds(n in any::<u64>(), pad in "[ \t]{0,2}") {
        prop_assert_eq!(parse_duration(&format!("{pad}{n}{pad}")), Ok(Duration::from_secs(n)));
    }

    #[test]
    fn parse_duration_units(n in 0u64..(1 << 32)) {
        prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        prop_assert_eq!(parse_duration(&format!("{n}us")), Ok(Duration::from_micros(n)));
        prop_assert_eq!(parse_duration(&format!("{n}ns")), Ok(Duration::from_nanos(n)));
        prop_assert_eq!(parse_duration(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
        prop_assert_eq!(parse_duration(&format!("{n}h")), Ok(Duration::from_secs(n * 3600)));
    }

    #[test]
    fn parse_duration_round_trips_its_canonical_format(secs in 0u64..(1 << 34), nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        let text = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&text), Ok(d), "{:?}", text);
    }
}

// ---------------------------------------------------------------------------------------
// Source::parse
// ---------------------------------------------------------------------------------------

fn url_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "file:(//)?[a-z]{0,5}(/[a-zA-Z0-9._%~ -]{0,8}){0,4}",
        "(file|FILE|s3|nfs|http|ftp|x)://[^ ]{0,30}",
        "file://[\\PC]{0,30}",
    ]
}

/// One directory name that needs no escaping in a URL.
fn dir_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,11}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn source_parse_never_panics(s in url_like()) {
        let _ = Source::parse(&s);
    }

    #[test]
    fn source_parse_round_trips_existing_directories(names in prop::collection::vec(dir_name(), 1..4)) {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        for n in &names {
            p.push(n);
        }
        fs::create_dir_all(&p).unwrap();
        let url = format!("file://{}", p.display());
        let src = Source::parse(&url);
        prop_assert_eq!(&src, &Ok(Source::Local { root: p.clone() }), "{}", url);
        prop_assert_eq!(src.unwrap().to_string(), url);
        // a file, and a missing directory, are refused where SOURCE is
        // read (parsing itself is pure)
        let file = p.join("a-file");
        fs::write(&file, b"x").unwrap();
        let file_url = format!("file://{}", file.display());
        prop_assert!(cachalot::cli::parse_source(&file_url).is_err(), "{} accepted", file_url);
        let missing = p.join("missing-dir");
        let missing_url = format!("file://{}", missing.display());
        prop_assert!(cachalot::cli::parse_source(&missing_url).is_err(), "{} accepted", missing_url);
    }

    #[test]
    fn source_parse_refuses_other_schemes_and_hosts(scheme in "[a-z][a-z0-9+.-]{0,8}", host in "[a-z][a-z0-9-]{0,10}") {
        prop_assume!(!["file", "nfs", "s3"].contains(&scheme.as_str()));
        let other = format!("{scheme}://{host}/x");
        prop_assert!(Source::parse(&other).is_err(), "{} accepted", other);
        prop_assume!(host != "localhost");
        let with_host = Source::parse(&format!("file://{host}/tmp"));
        prop_assert!(with_host.is_err(), "file://{}/tmp accepted: {:?}", host, with_host);
    }

    /// Any spelling of a `..` segment, or a path that is not absolute, is refused (the
    /// error says "must be absolute and must not contain '..'").
    #[test]
        fn source_parse_refuses_dot_dot_in_any_spelling(names in prop::collection::vec(dir_name(), 0..3),
                                                    dots in prop::sample::select(vec!["..", "%2e%2e", "%2E.", ".%2e"]),
                                                    tail in prop::collection::vec(dir_name(), 0..2)) {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        for n in &names {
            p.push(n);
        }
        fs::create_dir_all(&p).unwrap();
        let mut url = format!("file://{}/{dots}", p.display());
        for t in &tail {
            url.push('/');
            url.push_str(t);
        }
        prop_assert!(Source::parse(&url).is_err(), "{} accepted: {:?}", url, Source::parse(&url));
        let rel = format!("file:{}", names.first().map_or("tmp", |s| s.as_str()));
        prop_assert!(Source::parse(&rel).is_err(), "{} accepted: {:?}", rel, Source::parse(&rel));
    }
}

/// A host name or address for nfs:// URLs.
fn nfs_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
        (any::<u8>(), any::<u8>(), any::<u8>(), 1u8..255)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ]
}

/// A `..` or `.` segment, spelled any way a URL allows.
fn dot_segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%2e", "%2E",
    ])
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn nfs_sources_round_trip(host in nfs_host(), port in prop::option::of(1u16..), names in prop::collection::vec(dir_name(), 0..4)) {
        let path = format!("/{}", names.join("/"));
        let url = match port {
            Some(p) => format!("nfs://{host}:{p}{path}"),
            None => format!("nfs://{host}{path}"),
        };
        let parsed = Source::parse(&url);
        // the url crate drops a default port of its own (none for nfs) and keeps ours
        prop_assert_eq!(
            &parsed,
            &Ok(Source::Nfs { host: host.clone(), port, path: path.clone() }),
            "{}", url
        );
        let text = parsed.unwrap().to_string();
        prop_assert_eq!(text.as_str(), url.as_str());
        prop_assert_eq!(Source::parse(&text).unwrap().to_string(), text);
    }

    /// nfs:// and s3:// never let a `.`/`..` segment through, however it is spelled.
    #[test]
    fn nfs_and_s3_refuse_dot_segments(host in nfs_host(), bucket in "[a-z0-9][a-z0-9-]{2,20}",
                                      before in prop::collection::vec(dir_name(), 0..3),
                                      dots in dot_segment(),
                                      after in prop::collection::vec(dir_name(), 0..2)) {
        let mut segs = before.clone();
        segs.push(dots.to_string());
        segs.extend(after.iter().cloned());
        let path = segs.join("/");
        for url in [format!("nfs://{host}/{path}"), format!("s3://{bucket}/{path}")] {
            let r = Source::parse(&url);
            prop_assert!(r.is_err(), "{} accepted as {:?}", url, r);
        }
    }

    /// Whatever is accepted has a clean path: absolute, normalised, no `.`/`..`/NUL.
    #[test]
    fn accepted_nfs_and_s3_paths_are_clean(rest in "[\\PC]{0,40}", s3 in any::<bool>()) {
        let url = if s3 { format!("s3://{rest}") } else { format!("nfs://{rest}") };
        match Source::parse(&url) {
            Ok(Source::Nfs { path, .. }) => {
                prop_assert!(path.starts_with('/'), "{url}: {path:?}");
                let inner = &path[1..];
                prop_assert!(inner.is_empty() || inner.split('/').all(component_ok), "{url}: {path:?}");
            }
            Ok(Source::S3 { bucket, prefix, .. }) => {
                prop_assert!(!bucket.is_empty() && !bucket.contains(['/', '@', ':']), "{url}: {bucket:?}");
                prop_assert!(prefix.is_empty() || prefix.split('/').all(component_ok), "{url}: {prefix:?}");
            }
            Ok(other) => prop_assert!(false, "{url} parsed as {other:?}"),
            Err(_) => {}
        }
    }

    #[test]
    fn s3_sources_round_trip(bucket in "[a-z0-9][a-z0-9-]{1,19}[a-z0-9]", names in prop::collection::vec(dir_name(), 0..4), slash in any::<bool>()) {
        let prefix = names.join("/");
        let url = if prefix.is_empty() {
            format!("s3://{bucket}{}", if slash { "/" } else { "" })
        } else {
            format!("s3://{bucket}/{prefix}{}", if slash { "/" } else { "" })
        };
        let parsed = Source::parse(&url);
        prop_assert_eq!(&parsed, &Ok(Source::S3 { bucket: bucket.clone(), prefix: prefix.clone(), endpoint: None, region: None }), "{}", url);
        let text = parsed.unwrap().to_string();
        prop_assert_eq!(Source::parse(&text).unwrap().to_string(), text);
    }
}

// ---------------------------------------------------------------------------------------
// BackendPath
// ---------------------------------------------------------------------------------------

fn component_ok(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && !c.contains('\0')
        && !c.contains('/')
        && c.len() <= 255
}

fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just(String::new()),
                Just("a\0b".to_string()),
                Just("x".repeat(256)),
                Just("é".repeat(128)),
                "[a-z.]{1,5}",
                "[\\PC]{1,8}",
            ],
            0..6
        )
        .prop_map(|v| v.join("/")),
        "/?([a-z.]{0,3}/{1,2}){0,5}",
    ]
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn backend_path_parse_never_yields_a_bad_component(s in path_like()) {
        let oracle = s.split('/').filter(|c| !c.is_empty()).all(component_ok);
        match BackendPath::parse(&s) {
            Ok(p) => {
                prop_assert!(oracle, "{s:?} accepted as {p:?}");
                let text = p.as_str();
                prop_assert!(!text.starts_with('/') && !text.ends_with('/'), "{text:?}");
                if !text.is_empty() {
                    prop_assert!(text.split('/').all(component_ok), "{text:?}");
                }
                let again = BackendPath::parse(text).ok();
                prop_assert_eq!(again.as_ref(), Some(&p), "parse is idempotent");
                prop_assert_eq!(p.to_string(), format!("/{text}"));
                // walking up always ends at the root, never above it
                let mut q = p.clone();
                for _ in 0..=text.matches('/').count() {
                    q = q.parent();
                }
                prop_assert!(q.is_root());
            }
            Err(_) => prop_assert!(!oracle, "{s:?} refused"),
        }
    }

    #[test]
    fn joining_any_name_never_escapes(base in path_like(), name in prop_oneof![any::<String>(), Just("..".into()), Just(".".into()), "[a-z/.]{0,6}"]) {
        let Ok(base) = BackendPath::parse(&base) else { return Ok(()); };
        match base.join(&name) {
            Ok(j) => {
                prop_assert!(component_ok(&name), "{name:?} joined");
                prop_assert_eq!(j.parent(), base.clone());
                prop_assert_eq!(j.name(), name.as_str());
                prop_assert!(j.as_str().starts_with(base.as_str()));
                prop_assert_eq!(j.as_str().matches('/').count(),
                                if base.is_root() { 0 } else { base.as_str().matches('/').count() + 1 });
            }
            Err(_) => prop_assert!(!component_ok(&name), "{name:?} refused"),
        }
        let _ = is_temp_name(&name);
    }
}

// ---------------------------------------------------------------------------------------
// The page store reading page files it did not write
// ---------------------------------------------------------------------------------------

struct Store {
    _dir: tempfile::TempDir,
    store: std::sync::Arc<VolumeCache>,
    root: PathBuf,
}

fn store(quota: u64) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let store = VolumeCache::open(
        PageStoreConfig::new(root.clone(), quota, 4096),
        "file:///fuzz",
    )
    .unwrap();
    assert!(store.wait_index_ready(Duration::from_secs(10)));
    Store {
        _dir: dir,
        store,
        root,
    }
}

fn page_path(s: &Store, key: &PageKey) -> PathBuf {
    let stem = key.file_stem();
    s.root
        .join("pages")
        .join(s.store.tag().to_string())
        .join(&stem[..2])
        .join(format!("{stem}.page"))
}

fn key_strategy() -> impl Strategy<Value = PageKey> {
    (
        any::<String>(),
        "[a-z/]{0,20}",
        any::<String>(),
        any::<u64>(),
    )
        .prop_map(|(source, path, version, index)| PageKey {
            source,
            path,
            version,
            index,
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        len: usize,
    },
    Append {
        bytes: Vec<u8>,
    },
    Overwrite {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Set a 4-byte little-endian field (key length at 8, data length after the key).
    Field {
        at: usize,
        value: u32,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        (
            prop::sample::select(vec![8usize, 12, 16, 20, 24]),
            any::<u32>()
        )
            .prop_map(|(at, value)| Mutation::Field { at, value }),
    ]
}

fn apply(m: &Mutation, v: &mut Vec<u8>) {
    let n = v.len();
    match m {
        Mutation::Flip { at, bit } => v[at % n] ^= 1 << bit,
        Mutation::Truncate { len } => v.truncate(len % n),
        Mutation::Append { bytes } => v.extend_from_slice(bytes),
        Mutation::Overwrite { at, bytes } => {
            let at = at % n;
            for (i, b) in bytes.iter().enumerate() {
                if at + i < n {
                    v[at + i] = *b;
                }
            }
        }
        Mutation::Field { at, value } => {
            if at + 4 <= n {
                v[*at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// Arbitrary bytes where a page file belongs: `get` returns None (never panics,
    /// never data) and removes the file.
    #[test]
    fn arbitrary_bytes_as_a_page_file_are_never_served(key in key_strategy(), bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let s = store(1 << 30);
        let p = page_path(&s, &key);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &bytes).unwrap();
        prop_assert_eq!(s.store.get(&key), None);
        prop_assert!(!p.exists(), "the bad page file was not removed");
        // and the store keeps working for that key
        s.store.put(&key, b"good data");
        prop_assert_eq!(s.store.get(&key), Some(b"good data".to_vec()));
    }

    /// A valid page file, damaged: `get` returns None (or exactly the original data if
    /// the damage changed nothing) and removes the damaged file.
    #[test]
    fn damaged_page_files_are_never_served(key in key_strategy(), data in prop::collection::vec(any::<u8>(), 0..5000), muts in prop::collection::vec(mutation(), 1..4)) {
        let s = store(1 << 30);
        s.store.put(&key, &data);
        let p = page_path(&s, &key);
        let good = fs::read(&p).unwrap();
        let mut bad = good.clone();
        for m in &muts {
            if !bad.is_empty() {
                apply(m, &mut bad);
            }
        }
        fs::write(&p, &bad).unwrap();
        match s.store.get(&key) {
            None => prop_assert!(!p.exists(), "the damaged page file was not removed"),
            Some(got) => {
                prop_assert!(bad == good, "damaged page file served ({muts:?})");
                prop_assert_eq!(got, data);
            }
        }
    }

    /// The same for `get_range` (v2 files: header and per-block checksums, read in
    /// part): a damaged file yields None and is removed, or exactly the original bytes
    /// of the range (damage outside the blocks the range reads is not seen by it). The
    /// mutations include the v2 fields after the key: data length, block size, crcs.
    #[test]
    fn damaged_page_files_are_never_served_by_range_reads(
        key in key_strategy(),
        data in prop::collection::vec(any::<u8>(), 0..70_000),
        muts in prop::collection::vec(mutation(), 1..4),
        v2_field in (prop::sample::select(vec![8usize, 12, 16, 20]), any::<u32>()),
        offset in 0u64..80_000,
        len in 0usize..20_000,
    ) {
        let s = store(1 << 30);
        s.store.put(&key, &data);
        let p = page_path(&s, &key);
        let good = fs::read(&p).unwrap();
        let mut bad = good.clone();
        for m in &muts {
            if !bad.is_empty() {
                apply(m, &mut bad);
            }
        }
        // A field of the v2 header after the key (12 + key length + rel).
        let id_len = u32::from_le_bytes([good[8], good[9], good[10], good[11]]) as usize;
        let at = 12 + id_len + v2_field.0;
        if at + 4 <= bad.len() && offset % 2 == 0 {
            bad[at..at + 4].copy_from_slice(&v2_field.1.to_le_bytes());
        }
        fs::write(&p, &bad).unwrap();
        match s.store.get_range(&key, offset, len) {
            None => prop_assert!(!p.exists(), "the damaged page file was not removed"),
            Some(got) => {
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                prop_assert_eq!(&got[..], &data[start..end], "damaged page served wrong bytes");
            }
        }
    }

    /// The valid page file of another key under this key's name: never served.
    #[test]
    fn a_page_of_another_key_is_never_served(a in key_strategy(), b in key_strategy(), data in prop::collection::vec(any::<u8>(), 0..2000)) {
        prop_assume!(a != b);
        let s = store(1 << 30);
        s.store.put(&a, &data);
        let pa = page_path(&s, &a);
        let pb = page_path(&s, &b);
        fs::create_dir_all(pb.parent().unwrap()).unwrap();
        fs::copy(&pa, &pb).unwrap();
        prop_assert_eq!(s.store.get(&b), None);
        prop_assert_eq!(s.store.get(&a), Some(data));
    }
}

/// Names the index rebuild meets in `pages/` that the store did not write.
fn stray_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".page".to_string()),
        Just("a.page".to_string()),
        Just("é.page".to_string()),
        Just("aé.page".to_string()),
        Just("ab.page.tmp".to_string()),
        "[a-f0-9]{0,3}\\.page",
        "[\\PC]{1,6}\\.page",
        "[a-z]{1,8}",
    ]
    .prop_filter("one file name", |n| {
        !n.contains(['/', '\0']) && n != "." && n != ".."
    })
}

proptest! {
    #![proptest_config(cases(100))]

    /// Stray files in the cache directory (any name, any content) never break the
    /// store: the background index becomes ready and pages are stored and served, also
    /// when the quota forces evictions (which walk the stray entries too).
    #[test]
    fn stray_files_in_the_cache_dir_never_break_the_store(names in prop::collection::vec(stray_name(), 1..6), sizes in prop::collection::vec(0usize..20_000, 6)) {
        let dir = tempfile::tempdir().unwrap();
        for (i, n) in names.iter().enumerate() {
            let sub = dir.path().join("pages").join(["ab", "zz", "é"][i % 3]);
            fs::create_dir_all(&sub).unwrap();
            fs::write(sub.join(n), vec![7u8; sizes[i % sizes.len()]]).unwrap();
        }
        // a quota the stray files exceed: the index rebuild evicts
        let store = VolumeCache::open(PageStoreConfig::new(dir.path().to_path_buf(), 16 * 1024, 4096), "s").unwrap();
        prop_assert!(store.wait_index_ready(Duration::from_secs(5)), "index never became ready");
        let key = PageKey { source: "s".into(), path: "p".into(), version: "v".into(), index: 0 };
        for i in 0..8u64 {
            store.put(&key.with_index(i), &[i as u8; 3000]);
        }
        prop_assert_eq!(store.get(&key.with_index(7)), Some(vec![7u8; 3000]));
    }
}

/// The deterministic core of the property above.
#[test]
fn a_short_stray_page_name_does_not_kill_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("pages").join("ab");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("x.page"), vec![0u8; 30_000]).unwrap();
    let store = VolumeCache::open(
        PageStoreConfig::new(dir.path().to_path_buf(), 16 * 1024, 4096),
        "s",
    )
    .unwrap();
    assert!(
        store.wait_index_ready(Duration::from_secs(5)),
        "index never became ready"
    );
    // the quota is exceeded: storing pages evicts, and eviction meets the stray entry
    let key = PageKey {
        source: "s".into(),
        path: "p".into(),
        version: "v".into(),
        index: 0,
    };
    for i in 0..8u64 {
        store.put(&key.with_index(i), &[i as u8; 3000]);
    }
    assert_eq!(store.get(&key.with_index(7)), Some(vec![7u8; 3000]));
}

/// The deterministic core of `source_parse_refuses_dot_dot_in_any_spelling`.
#[test]
fn source_parse_refuses_dot_dot_examples() {
    for url in [
        "file:///tmp/../etc",
        "file:///tmp/%2e%2e/etc",
        "file:///tmp\\..\\etc",
        "file:///../../../tmp",
        "file:tmp",
    ] {
        assert!(
            Source::parse(url).is_err(),
            "{url} accepted as {:?}",
            Source::parse(url)
        );
    }
}
