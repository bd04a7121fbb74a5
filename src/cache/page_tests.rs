//! The page file format: round trips, damage of every kind, v1 files.

use super::*;

fn key(index: u64) -> PageKey {
    PageKey {
        source: "file:///srv".into(),
        path: "a/b".into(),
        version: "v1".into(),
        index,
    }
}

#[test]
fn round_trip() {
    let data = vec![7u8; 1000];
    let file = encode(&key(3), &data);
    assert_eq!(decode(&key(3), &file).unwrap(), &data[..]);
}

#[test]
fn every_single_byte_corruption_is_detected() {
    let data: Vec<u8> = (0..64u8).collect();
    let file = encode(&key(1), &data);
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0x40;
        assert!(
            decode(&key(1), &bad).is_err(),
            "flip at byte {i} not detected"
        );
    }
}

#[test]
fn truncation_and_wrong_key_are_detected() {
    let file = encode(&key(1), b"hello");
    for len in 0..file.len() {
        assert!(decode(&key(1), &file[..len]).is_err(), "length {len}");
    }
    assert_eq!(decode(&key(2), &file), Err(PageFormatError::WrongKey));
}

/// A page file on disk, opened, for `read_range`.
fn on_disk(bytes: &[u8]) -> (tempfile::NamedTempFile, std::fs::File, u64) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut tmp, bytes).unwrap();
    let file = std::fs::File::open(tmp.path()).unwrap();
    (tmp, file, bytes.len() as u64)
}

fn range(bytes: &[u8], k: &PageKey, offset: u64, len: usize) -> Result<Vec<u8>, RangeError> {
    let (_tmp, file, file_len) = on_disk(bytes);
    read_range(&file, file_len, k, offset, len)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
}

#[test]
fn v2_is_written_with_one_crc_per_block() {
    let data = pattern(3 * BLOCK_SIZE as usize + 5);
    let file = encode(&key(0), &data);
    assert_eq!(&file[..8], MAGIC_V2);
    let id_len = key(0).object_id().len();
    // magic, key_len, key, index, data_len, block_size, 4 crcs, header crc
    assert_eq!(
        file.len(),
        8 + 4 + id_len + 8 + 4 + 4 + 4 * 4 + 4 + data.len()
    );
    assert_eq!(decode(&key(0), &file).unwrap(), &data[..]);
}

#[test]
fn range_reads_at_block_boundaries_and_past_the_end() {
    let bs = 4096usize;
    let data = pattern(5 * bs + 100);
    let file = encode_with_block(&key(2), &data, bs as u32);
    let cases: &[(usize, usize)] = &[
        (0, 1),
        (0, bs),
        (bs - 1, 2),
        (bs, bs),
        (bs - 1, bs + 2),
        (2 * bs + 7, 4096),
        (0, data.len()),
        (5 * bs, 100),
        (5 * bs + 50, 4096), // past the end: shorter
        (data.len() - 1, 10),
        (data.len(), 10), // at the end: empty
        (data.len() + 4096, 10),
        (123, 0),
    ];
    for &(off, len) in cases {
        let start = off.min(data.len());
        let end = (off + len).min(data.len());
        let got = range(&file, &key(2), off as u64, len).unwrap();
        assert_eq!(got, &data[start..end], "offset {off} len {len}");
    }
    assert!(range(&file, &key(2), u64::MAX, 10).unwrap().is_empty());
    // An empty page.
    let empty = encode(&key(2), &[]);
    assert!(range(&empty, &key(2), 0, 10).unwrap().is_empty());
    assert_eq!(decode(&key(2), &empty).unwrap(), &[] as &[u8]);
}

#[test]
fn a_flipped_data_byte_fails_ranges_over_its_block_only() {
    let bs = 4096usize;
    let data = pattern(4 * bs);
    let good = encode_with_block(&key(1), &data, bs as u32);
    let data_at = good.len() - data.len();
    let mut bad = good.clone();
    bad[data_at + 2 * bs + 10] ^= 0x04; // in block 2
    assert!(matches!(
        range(&bad, &key(1), (2 * bs) as u64, 1),
        Err(RangeError::Format(PageFormatError::DataChecksum))
    ));
    assert!(matches!(
        range(&bad, &key(1), (bs + 4000) as u64, 200), // spans blocks 1 and 2
        Err(RangeError::Format(PageFormatError::DataChecksum))
    ));
    // Other blocks verify on their own (the store drops the page anyway).
    assert_eq!(range(&bad, &key(1), 0, bs).unwrap(), &data[..bs]);
    assert_eq!(decode(&key(1), &bad), Err(PageFormatError::DataChecksum));
}

#[test]
fn any_header_damage_fails_every_range() {
    let data = pattern(3 * 4096);
    let good = encode_with_block(&key(1), &data, 4096);
    let data_at = good.len() - data.len();
    for i in 0..data_at {
        let mut bad = good.clone();
        bad[i] ^= 0x20;
        assert!(
            matches!(range(&bad, &key(1), 0, 10), Err(RangeError::Format(_))),
            "flip at header byte {i} not detected"
        );
    }
    assert!(matches!(
        range(&good, &key(7), 0, 10),
        Err(RangeError::Format(PageFormatError::WrongKey))
    ));
    for len in 0..good.len() {
        assert!(range(&good[..len], &key(1), 0, 10).is_err(), "length {len}");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(range(&longer, &key(1), 0, 10).is_err());
}

#[test]
fn a_header_longer_than_the_prefetch_is_read_whole() {
    let mut k = key(9);
    k.path = "p".repeat(3 * HEADER_PREFETCH);
    let data = pattern(70_000);
    let file = encode_with_block(&k, &data, 512); // 137 crcs too
    assert_eq!(
        range(&file, &k, 65_000, 6000).unwrap(),
        &data[65_000..70_000]
    );
}

#[test]
fn v1_files_are_still_read_and_verified_whole() {
    let data = pattern(10_000);
    let v1 = encode_v1(&key(4), &data);
    assert_eq!(decode(&key(4), &v1).unwrap(), &data[..]);
    assert_eq!(range(&v1, &key(4), 9000, 4096).unwrap(), &data[9000..]);
    // A flip anywhere in a v1 file fails every range, even far from it.
    let mut bad = v1.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(range(&bad, &key(4), 0, 1).is_err());
    assert!(decode(&key(4), &bad).is_err());
}

#[test]
fn zero_block_size_is_rejected_not_a_panic() {
    let mut file = encode(&key(0), b"abc");
    let id_len = key(0).object_id().len();
    let at = 12 + id_len + 12;
    file[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
    assert!(decode(&key(0), &file).is_err());
    assert!(range(&file, &key(0), 0, 3).is_err());
}

#[test]
fn stems_differ_per_version_and_index() {
    let mut other = key(1);
    other.version = "v2".into();
    assert_ne!(key(1).file_stem(), other.file_stem());
    assert_ne!(key(1).file_stem(), key(2).file_stem());
}

#[test]
fn v3_data_starts_aligned_and_reads_like_v2() {
    let data = pattern(3 * BLOCK_SIZE as usize + 5);
    let file = encode_v3(&key(5), &data);
    assert_eq!(&file[..8], MAGIC_V3);
    let data_at = file.len() - data.len();
    assert_eq!(
        data_at, DATA_ALIGN,
        "a short key's header pads to one block"
    );
    assert_eq!(decode(&key(5), &file).unwrap(), &data[..]);
    assert_eq!(
        range(&file, &key(5), 40_000, 9000).unwrap(),
        &data[40_000..49_000]
    );
    // A long key: the header spans blocks, the data still starts at one.
    let mut k = key(6);
    k.path = "p".repeat(5000);
    let file = encode_v3(&k, &data);
    assert_eq!(file.len() - data.len(), 2 * DATA_ALIGN);
    assert_eq!(range(&file, &k, 0, 100).unwrap(), &data[..100]);
}

#[test]
fn v3_damage_truncation_and_a_missing_pad_are_detected() {
    let data = pattern(2 * BLOCK_SIZE as usize);
    let good = encode_v3(&key(1), &data);
    let data_at = good.len() - data.len();
    let mut bad = good.clone();
    bad[data_at + BLOCK_SIZE as usize + 1] ^= 0x10;
    assert_eq!(decode(&key(1), &bad), Err(PageFormatError::DataChecksum));
    assert!(range(&bad, &key(1), u64::from(BLOCK_SIZE), 10).is_err());
    assert_eq!(range(&bad, &key(1), 0, 10).unwrap(), &data[..10]);
    let mut bad = good.clone();
    bad[20] ^= 0x01; // in the key
    assert!(decode(&key(1), &bad).is_err());
    assert!(range(&bad, &key(1), 0, 10).is_err());
    for len in [0, 8, 100, data_at, data_at + 1, good.len() - 1] {
        assert!(decode(&key(1), &good[..len]).is_err(), "length {len}");
        assert!(range(&good[..len], &key(1), 0, 10).is_err(), "length {len}");
    }
    // The v2 layout under the v3 magic (data not aligned) is not a page.
    let mut unpadded = encode(&key(1), &data);
    unpadded[..8].copy_from_slice(MAGIC_V3);
    assert!(decode(&key(1), &unpadded).is_err());
    assert!(range(&unpadded, &key(1), 0, 10).is_err());
}
