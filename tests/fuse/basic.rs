//! Basic POSIX operations through a `cachalot mount` of a `file://` source.
//! The backing directory is the ground truth for every check.

use crate::common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn create_write_read_roundtrip_small_and_large() {
    let m = Mount::new();
    let small = b"hello cachalot\n".to_vec();
    let large = pattern(5 * MIB + 123, 1); // spans several 1 MiB pages, unaligned end

    fs::write(m.m("small.txt"), &small).unwrap();
    {
        let mut f = File::create(m.m("large.bin")).unwrap();
        // write in odd-sized chunks
        for chunk in large.chunks(100_003) {
            f.write_all(chunk).unwrap();
        }
    }

    assert_bytes_eq(
        &fs::read(m.b("small.txt")).unwrap(),
        &small,
        "backing small.txt",
    );
    assert_bytes_eq(
        &fs::read(m.b("large.bin")).unwrap(),
        &large,
        "backing large.bin",
    );
    assert_bytes_eq(
        &fs::read(m.m("small.txt")).unwrap(),
        &small,
        "mount small.txt",
    );
    assert_bytes_eq(
        &fs::read(m.m("large.bin")).unwrap(),
        &large,
        "mount large.bin",
    );
    assert_eq!(
        fs::metadata(m.m("large.bin")).unwrap().len(),
        large.len() as u64
    );
    assert!(
        all_temp_files(m.backing()).is_empty(),
        "temp files left: {:?}",
        all_temp_files(m.backing())
    );
}

#[test]
fn read_files_created_in_backing() {
    let big = pattern(3 * MIB + 17, 2);
    let big2 = big.clone();
    let m = Mount::with_prepare(&[], move |b| {
        fs::write(b.join("top.bin"), &big2).unwrap();
        fs::create_dir_all(b.join("a/b/c")).unwrap();
        fs::write(b.join("a/b/c/deep.txt"), b"deep").unwrap();
        fs::write(b.join("empty"), b"").unwrap();
    });
    assert_bytes_eq(&fs::read(m.m("top.bin")).unwrap(), &big, "mount top.bin");
    assert_eq!(fs::read(m.m("a/b/c/deep.txt")).unwrap(), b"deep");
    assert_eq!(fs::read(m.m("empty")).unwrap(), b"");
    assert!(fs::metadata(m.m("a/b")).unwrap().is_dir());

    // reads at arbitrary offsets (crossing a page boundary)
    let f = File::open(m.m("top.bin")).unwrap();
    let mut buf = vec![0u8; 10_000];
    f.read_exact_at(&mut buf, (MIB - 5_000) as u64).unwrap();
    assert_bytes_eq(
        &buf,
        &big[MIB - 5_000..MIB + 5_000],
        "pread across page boundary",
    );
    // a read past EOF returns 0 bytes
    let n = f.read_at(&mut buf, big.len() as u64 + 10).unwrap();
    assert_eq!(n, 0);
    // short read at the tail
    let n = f.read_at(&mut buf, big.len() as u64 - 7).unwrap();
    assert_eq!(&buf[..n], &big[big.len() - 7..]);
}

#[test]
fn overwrite_with_o_trunc_replaces_and_shrinks() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("f"), pattern(100_000, 3)).unwrap()
    });
    // make sure the old content went through the mount (and maybe into the cache) first
    assert_eq!(fs::read(m.m("f")).unwrap().len(), 100_000);
    fs::write(m.m("f"), b"0123456789").unwrap();
    assert_eq!(
        fs::read(m.b("f")).unwrap(),
        b"0123456789",
        "backing after overwrite"
    );
    assert_eq!(
        fs::read(m.m("f")).unwrap(),
        b"0123456789",
        "mount after overwrite"
    );
    assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 10);
}

#[test]
fn append_adds_to_end() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("log"), b"hello ").unwrap());
    {
        let mut f = OpenOptions::new().append(true).open(m.m("log")).unwrap();
        f.write_all(b"world").unwrap();
    }
    assert_eq!(fs::read(m.b("log")).unwrap(), b"hello world");
    {
        let mut f = OpenOptions::new().append(true).open(m.m("log")).unwrap();
        f.write_all(b"!").unwrap();
        f.write_all(b"\n").unwrap();
    }
    assert_eq!(fs::read(m.b("log")).unwrap(), b"hello world!\n");
    assert_eq!(fs::read(m.m("log")).unwrap(), b"hello world!\n");
    // append on a file created through the mount with O_APPEND|O_CREAT
    {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(m.m("new.log"))
            .unwrap();
        f.write_all(b"a").unwrap();
    }
    {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(m.m("new.log"))
            .unwrap();
        f.write_all(b"b").unwrap();
    }
    assert_eq!(fs::read(m.b("new.log")).unwrap(), b"ab");
}

#[test]
fn random_pwrite_keeps_untouched_ranges() {
    let orig = pattern(3 * MIB, 4);
    let orig2 = orig.clone();
    let m = Mount::with_prepare(&[], move |b| fs::write(b.join("data"), &orig2).unwrap());
    let mut expected = orig.clone();
    let writes: Vec<(usize, Vec<u8>)> = vec![
        (0, b"HEAD".to_vec()),
        (MIB - 3, pattern(10, 40)), // crosses the first page boundary
        (2 * MIB + MIB / 2, pattern(4096, 41)), // middle of the last page
        (3 * MIB + 100, b"past-eof".to_vec()), // beyond EOF: leaves a hole of zeros
    ];
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.m("data"))
            .unwrap();
        for (off, data) in &writes {
            f.write_all_at(data, *off as u64).unwrap();
            if expected.len() < off + data.len() {
                expected.resize(off + data.len(), 0);
            }
            expected[*off..off + data.len()].copy_from_slice(data);
        }
        // read-after-write through the same descriptor
        let mut buf = vec![0u8; 20];
        f.read_exact_at(&mut buf, (MIB - 10) as u64).unwrap();
        assert_bytes_eq(
            &buf,
            &expected[MIB - 10..MIB + 10],
            "pread on the writing fd",
        );
        let mut tail = vec![0u8; 158]; // up to the new EOF (3 MiB + 108)
        f.read_exact_at(&mut tail, (3 * MIB - 50) as u64).unwrap();
        assert_bytes_eq(
            &tail,
            &expected[3 * MIB - 50..3 * MIB + 108],
            "pread over the hole",
        );
    }
    assert_bytes_eq(
        &fs::read(m.b("data")).unwrap(),
        &expected,
        "backing after pwrite",
    );
    drop_caches();
    assert_bytes_eq(
        &fs::read(m.m("data")).unwrap(),
        &expected,
        "mount after pwrite",
    );
}

#[test]
fn seek_and_write_in_new_file() {
    let m = Mount::new();
    {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(m.m("sparse"))
            .unwrap();
        f.seek(SeekFrom::Start(5000)).unwrap();
        f.write_all(b"X").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"A").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        assert_eq!(v.len(), 5001);
    }
    let mut expected = vec![0u8; 5001];
    expected[0] = b'A';
    expected[5000] = b'X';
    assert_bytes_eq(
        &fs::read(m.b("sparse")).unwrap(),
        &expected,
        "backing sparse",
    );
}

#[test]
fn truncate_grow_and_shrink() {
    let orig = pattern(200_000, 5);
    let orig2 = orig.clone();
    let m = Mount::with_prepare(&[], move |b| {
        fs::write(b.join("t1"), &orig2).unwrap();
        fs::write(b.join("t2"), &orig2).unwrap();
    });
    // ftruncate on an open descriptor: shrink, then grow
    {
        let f = OpenOptions::new().write(true).open(m.m("t1")).unwrap();
        f.set_len(1000).unwrap();
        f.set_len(3000).unwrap();
    }
    let mut exp = orig[..1000].to_vec();
    exp.resize(3000, 0);
    assert_bytes_eq(
        &fs::read(m.b("t1")).unwrap(),
        &exp,
        "backing t1 after ftruncate",
    );
    assert_bytes_eq(
        &fs::read(m.m("t1")).unwrap(),
        &exp,
        "mount t1 after ftruncate",
    );

    // truncate(2) by path, no open handle: shrink
    truncate_path(&m.m("t2"), 12_345).unwrap();
    assert_eq!(fs::metadata(m.b("t2")).unwrap().len(), 12_345);
    assert_bytes_eq(
        &fs::read(m.b("t2")).unwrap(),
        &orig[..12_345],
        "backing t2 after shrink",
    );
    assert_eq!(fs::metadata(m.m("t2")).unwrap().len(), 12_345);
    // grow: zero filled
    truncate_path(&m.m("t2"), 2 * MIB as u64 + 1).unwrap();
    let mut exp2 = orig[..12_345].to_vec();
    exp2.resize(2 * MIB + 1, 0);
    assert_bytes_eq(
        &fs::read(m.b("t2")).unwrap(),
        &exp2,
        "backing t2 after grow",
    );
    assert_bytes_eq(&fs::read(m.m("t2")).unwrap(), &exp2, "mount t2 after grow");
    // to zero
    truncate_path(&m.m("t2"), 0).unwrap();
    assert_eq!(fs::metadata(m.b("t2")).unwrap().len(), 0);
    assert_eq!(fs::read(m.m("t2")).unwrap(), b"");
}

#[test]
fn mkdir_and_rmdir() {
    let m = Mount::new();
    fs::create_dir(m.m("d")).unwrap();
    assert!(fs::metadata(m.b("d")).unwrap().is_dir());
    fs::DirBuilder::new()
        .mode(0o750)
        .create(m.m("d/sub"))
        .unwrap();
    let md = fs::metadata(m.b("d/sub")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.mode() & 0o7777, 0o750, "mode of mkdir(0750)");
    fs::write(m.m("d/sub/f"), b"x").unwrap();
    assert_eq!(fs::read(m.b("d/sub/f")).unwrap(), b"x");
    fs::remove_file(m.m("d/sub/f")).unwrap();
    fs::remove_dir(m.m("d/sub")).unwrap();
    assert!(!m.b("d/sub").exists());
    fs::remove_dir(m.m("d")).unwrap();
    assert!(!m.b("d").exists());
    assert!(!m.m("d").exists());
}

#[test]
fn rename_file_and_replace_existing() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("a"), b"AAA").unwrap();
        fs::write(b.join("b"), b"BBBBBB").unwrap();
        fs::create_dir(b.join("dir")).unwrap();
    });
    fs::rename(m.m("a"), m.m("a2")).unwrap();
    assert!(!m.b("a").exists());
    assert_eq!(fs::read(m.b("a2")).unwrap(), b"AAA");
    assert!(!m.m("a").exists());
    assert_eq!(fs::read(m.m("a2")).unwrap(), b"AAA");

    // replace an existing target
    fs::rename(m.m("a2"), m.m("b")).unwrap();
    assert!(!m.b("a2").exists());
    assert_eq!(fs::read(m.b("b")).unwrap(), b"AAA");
    assert_eq!(fs::read(m.m("b")).unwrap(), b"AAA");

    // across directories
    fs::rename(m.m("b"), m.m("dir/b")).unwrap();
    assert_eq!(fs::read(m.b("dir/b")).unwrap(), b"AAA");
    assert_eq!(fs::read(m.m("dir/b")).unwrap(), b"AAA");
    assert!(!m.m("b").exists());

    // a file written through the mount then renamed keeps its content
    fs::write(m.m("fresh"), b"fresh data").unwrap();
    fs::rename(m.m("fresh"), m.m("dir/fresh2")).unwrap();
    assert_eq!(fs::read(m.b("dir/fresh2")).unwrap(), b"fresh data");
    assert!(!m.b("fresh").exists());
}

#[test]
fn rename_non_empty_directory() {
    let m = Mount::with_prepare(&[], |b| {
        fs::create_dir_all(b.join("src/inner/deeper")).unwrap();
        fs::write(b.join("src/one"), b"1").unwrap();
        fs::write(b.join("src/inner/two"), b"22").unwrap();
        fs::write(b.join("src/inner/deeper/three"), b"333").unwrap();
        fs::create_dir(b.join("other")).unwrap();
    });
    // touch the tree through the mount first so the daemon knows the old paths
    assert_eq!(fs::read(m.m("src/inner/two")).unwrap(), b"22");
    fs::rename(m.m("src"), m.m("other/dst")).unwrap();

    assert!(!m.b("src").exists());
    assert_eq!(fs::read(m.b("other/dst/one")).unwrap(), b"1");
    assert_eq!(fs::read(m.b("other/dst/inner/two")).unwrap(), b"22");
    assert_eq!(
        fs::read(m.b("other/dst/inner/deeper/three")).unwrap(),
        b"333"
    );

    assert!(!m.m("src").exists());
    assert_eq!(fs::read(m.m("other/dst/one")).unwrap(), b"1");
    assert_eq!(fs::read(m.m("other/dst/inner/two")).unwrap(), b"22");
    assert_eq!(
        fs::read(m.m("other/dst/inner/deeper/three")).unwrap(),
        b"333"
    );

    // writes below the renamed dir land at the new place
    fs::write(m.m("other/dst/inner/new"), b"n").unwrap();
    assert_eq!(fs::read(m.b("other/dst/inner/new")).unwrap(), b"n");
    assert!(!m.b("src/inner/new").exists());
}

#[test]
fn unlink_removes_file() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("gone"), b"bye").unwrap());
    assert_eq!(fs::read(m.m("gone")).unwrap(), b"bye");
    fs::remove_file(m.m("gone")).unwrap();
    assert!(!m.b("gone").exists());
    expect_errno(fs::metadata(m.m("gone")), libc::ENOENT, "stat after unlink");
    // unlink of a file created through the mount
    fs::write(m.m("tmp"), b"x").unwrap();
    fs::remove_file(m.m("tmp")).unwrap();
    assert!(!m.b("tmp").exists());
    assert_eq!(
        fs::read_dir(m.b("")).unwrap().count(),
        0,
        "backing dir should be empty"
    );
}

#[test]
fn symlink_and_readlink() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("target"), b"T").unwrap();
        std::os::unix::fs::symlink("target", b.join("pre_link")).unwrap();
    });
    // made through the mount
    std::os::unix::fs::symlink("target", m.m("link")).unwrap();
    let bl = fs::symlink_metadata(m.b("link")).unwrap();
    assert!(bl.file_type().is_symlink(), "backing link is not a symlink");
    assert_eq!(
        fs::read_link(m.b("link")).unwrap().to_str().unwrap(),
        "target"
    );
    assert_eq!(
        fs::read_link(m.m("link")).unwrap().to_str().unwrap(),
        "target"
    );
    assert!(fs::symlink_metadata(m.m("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read(m.m("link")).unwrap(),
        b"T",
        "following the symlink"
    );
    // made in the backing dir
    assert_eq!(
        fs::read_link(m.m("pre_link")).unwrap().to_str().unwrap(),
        "target"
    );
    // dangling, absolute target
    std::os::unix::fs::symlink("/nonexistent/abs/path", m.m("dangling")).unwrap();
    assert_eq!(
        fs::read_link(m.b("dangling")).unwrap().to_str().unwrap(),
        "/nonexistent/abs/path"
    );
    assert_eq!(
        fs::read_link(m.m("dangling")).unwrap().to_str().unwrap(),
        "/nonexistent/abs/path"
    );
    // unlink removes the link, not the target
    fs::remove_file(m.m("link")).unwrap();
    assert!(fs::symlink_metadata(m.b("link")).is_err());
    assert_eq!(fs::read(m.b("target")).unwrap(), b"T");
}

#[test]
fn hard_link() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("orig"), b"shared content").unwrap()
    });
    fs::hard_link(m.m("orig"), m.m("alias")).unwrap();
    let a = fs::metadata(m.b("orig")).unwrap();
    let b = fs::metadata(m.b("alias")).unwrap();
    assert_eq!(a.ino(), b.ino(), "backing names must be the same inode");
    assert_eq!(b.nlink(), 2);
    assert_eq!(fs::read(m.m("alias")).unwrap(), b"shared content");
    assert_eq!(
        fs::metadata(m.m("alias")).unwrap().nlink(),
        2,
        "nlink through the mount"
    );
    // removing one name keeps the other
    fs::remove_file(m.m("orig")).unwrap();
    assert!(!m.b("orig").exists());
    assert_eq!(fs::read(m.b("alias")).unwrap(), b"shared content");
    assert_eq!(fs::read(m.m("alias")).unwrap(), b"shared content");
}

#[test]
fn mkfifo_creates_fifo() {
    let m = Mount::new();
    mkfifo(&m.m("pipe"), 0o644).unwrap();
    let bm = fs::symlink_metadata(m.b("pipe")).unwrap();
    assert!(
        bm.file_type().is_fifo(),
        "backing entry is not a FIFO: {:?}",
        bm.file_type()
    );
    let mm = fs::symlink_metadata(m.m("pipe")).unwrap();
    assert!(
        mm.file_type().is_fifo(),
        "mount entry is not a FIFO: {:?}",
        mm.file_type()
    );
    fs::remove_file(m.m("pipe")).unwrap();
    assert!(fs::symlink_metadata(m.b("pipe")).is_err());
}

#[test]
fn rename_noreplace_refuses_existing_target() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("src"), b"source").unwrap();
        fs::write(b.join("dst"), b"destination").unwrap();
    });
    expect_errno(
        rename_noreplace(&m.m("src"), &m.m("dst")),
        libc::EEXIST,
        "renameat2(RENAME_NOREPLACE)",
    );
    assert_eq!(fs::read(m.b("src")).unwrap(), b"source");
    assert_eq!(fs::read(m.b("dst")).unwrap(), b"destination");
    assert_eq!(fs::read(m.m("dst")).unwrap(), b"destination");
    // the target exists only in the backing dir (never looked up through the mount)
    fs::write(m.b("hidden_dst"), b"h").unwrap();
    expect_errno(
        rename_noreplace(&m.m("src"), &m.m("hidden_dst")),
        libc::EEXIST,
        "renameat2(RENAME_NOREPLACE) onto a name only the backend knows",
    );
    assert_eq!(fs::read(m.b("hidden_dst")).unwrap(), b"h");
    // to a free name it works
    rename_noreplace(&m.m("src"), &m.m("free")).unwrap();
    assert!(!m.b("src").exists());
    assert_eq!(fs::read(m.b("free")).unwrap(), b"source");
}

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn readdir_lists_2000_entries() {
    let m = Mount::with_prepare(&[], |b| {
        fs::create_dir(b.join("big")).unwrap();
        for i in 0..2000 {
            fs::write(
                b.join(format!("big/file-{i:05}-with-a-longish-name")),
                i.to_string(),
            )
            .unwrap();
        }
    });
    let listed: Vec<String> = fs::read_dir(m.m("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), set.len(), "readdir returned duplicates");
    assert_eq!(set.len(), 2000);
    assert_eq!(set, names(&m.b("big")));
    assert_eq!(
        fs::read_to_string(m.m("big/file-01999-with-a-longish-name")).unwrap(),
        "1999"
    );

    // entries created through the mount show up in the next listing
    for i in 0..10 {
        fs::write(m.m(&format!("big/new-{i}")), b"n").unwrap();
    }
    let set2 = names(&m.m("big"));
    assert_eq!(set2.len(), 2010);
    assert_eq!(set2, names(&m.b("big")));
    // and removed ones disappear
    fs::remove_file(m.m("big/new-3")).unwrap();
    assert!(!names(&m.m("big")).contains("new-3"));
}

#[test]
fn readdir_reports_file_types() {
    let m = Mount::with_prepare(&[], |b| {
        fs::write(b.join("file"), b"f").unwrap();
        fs::create_dir(b.join("dir")).unwrap();
        std::os::unix::fs::symlink("file", b.join("sym")).unwrap();
        mkfifo(&b.join("fifo"), 0o644).unwrap();
    });
    let mut seen = BTreeSet::new();
    for e in fs::read_dir(m.mnt()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        match name.as_str() {
            "file" => assert!(ft.is_file(), "file: {ft:?}"),
            "dir" => assert!(ft.is_dir(), "dir: {ft:?}"),
            "sym" => assert!(ft.is_symlink(), "sym: {ft:?}"),
            "fifo" => assert!(ft.is_fifo(), "fifo: {ft:?}"),
            other => panic!("unexpected entry {other:?} in mount root"),
        }
        seen.insert(name);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn chmod_and_stat_size_mode() {
    let m = Mount::new();
    fs::write(m.m("f"), pattern(12_345, 6)).unwrap();
    let md = fs::metadata(m.m("f")).unwrap();
    assert_eq!(md.len(), 12_345);
    assert!(md.is_file());

    fs::set_permissions(m.m("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.b("f")).unwrap().mode() & 0o7777,
        0o640,
        "backing mode after chmod"
    );
    assert_eq!(
        fs::metadata(m.m("f")).unwrap().mode() & 0o7777,
        0o640,
        "mount mode after chmod"
    );

    fs::set_permissions(m.m("f"), fs::Permissions::from_mode(0o604)).unwrap();
    assert_eq!(fs::metadata(m.b("f")).unwrap().mode() & 0o7777, 0o604);
    assert_eq!(fs::metadata(m.m("f")).unwrap().mode() & 0o7777, 0o604);

    // chmod of a directory
    fs::create_dir(m.m("d")).unwrap();
    fs::set_permissions(m.m("d"), fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(fs::metadata(m.b("d")).unwrap().mode() & 0o7777, 0o711);
    assert_eq!(fs::metadata(m.m("d")).unwrap().mode() & 0o7777, 0o711);

    // size via stat after a write through the mount on an existing file
    {
        let mut f = OpenOptions::new().append(true).open(m.m("f")).unwrap();
        f.write_all(&[7u8; 655]).unwrap();
    }
    assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 13_000);
    assert_eq!(fs::metadata(m.b("f")).unwrap().len(), 13_000);
    // the mode survives a rewrite through the mount
    assert_eq!(
        fs::metadata(m.b("f")).unwrap().mode() & 0o7777,
        0o604,
        "mode after rewrite"
    );
}

#[test]
fn create_mode_is_respected() {
    let m = Mount::new();
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.m("private"))
        .unwrap();
    drop(f);
    assert_eq!(fs::metadata(m.b("private")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(m.m("private")).unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn utimens_sets_times() {
    let m = Mount::with_prepare(&[], |b| fs::write(b.join("f"), b"t").unwrap());
    let atime = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mtime = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    {
        let f = OpenOptions::new().write(true).open(m.m("f")).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
            .unwrap();
    }
    let bm = fs::metadata(m.b("f")).unwrap();
    assert_eq!(bm.mtime(), 1_234_567_890, "backing mtime");
    assert_eq!(bm.atime(), 1_000_000_000, "backing atime");
    let mm = fs::metadata(m.m("f")).unwrap();
    assert_eq!(mm.mtime(), 1_234_567_890, "mount mtime");
    assert_eq!(
        fs::read(m.b("f")).unwrap(),
        b"t",
        "content unchanged by utimens"
    );

    // like `cp -p`: write data, then futimens on the same descriptor, then close
    {
        let mut f = File::create(m.m("copy")).unwrap();
        f.write_all(b"copied bytes").unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
            .unwrap();
    }
    assert_eq!(fs::read(m.b("copy")).unwrap(), b"copied bytes");
    assert_eq!(
        fs::metadata(m.b("copy")).unwrap().mtime(),
        1_234_567_890,
        "backing mtime after write+futimens+close"
    );
    assert_eq!(
        fs::metadata(m.m("copy")).unwrap().mtime(),
        1_234_567_890,
        "mount mtime after write+futimens+close"
    );

    // by path (utimensat without an open handle)
    utimens_path(&m.m("f"), 1_100_000_000, 1_300_000_000).unwrap();
    assert_eq!(
        fs::metadata(m.b("f")).unwrap().mtime(),
        1_300_000_000,
        "backing mtime by path"
    );
    assert_eq!(
        fs::metadata(m.m("f")).unwrap().mtime(),
        1_300_000_000,
        "mount mtime by path"
    );

    // on a directory, through a descriptor
    fs::create_dir(m.m("d")).unwrap();
    let d = File::open(m.m("d")).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    d.set_modified(t).unwrap();
    assert_eq!(
        fs::metadata(m.b("d")).unwrap().mtime(),
        1_500_000_000,
        "backing dir mtime"
    );
    assert_eq!(
        fs::metadata(m.m("d")).unwrap().mtime(),
        1_500_000_000,
        "mount dir mtime"
    );
}

#[test]
fn read_after_write_through_mount() {
    let m = Mount::new();
    fs::create_dir_all(m.m("x/y")).unwrap();
    let v1 = pattern(2 * MIB + 5, 7);
    fs::write(m.m("x/y/f"), &v1).unwrap();
    assert_bytes_eq(&fs::read(m.m("x/y/f")).unwrap(), &v1, "read after write v1");
    let v2 = pattern(MIB / 2, 8);
    fs::write(m.m("x/y/f"), &v2).unwrap();
    assert_bytes_eq(&fs::read(m.m("x/y/f")).unwrap(), &v2, "read after write v2");
    drop_caches();
    assert_bytes_eq(
        &fs::read(m.m("x/y/f")).unwrap(),
        &v2,
        "read after write v2, page cache dropped",
    );
    assert_bytes_eq(&fs::read(m.b("x/y/f")).unwrap(), &v2, "backing v2");
}

/// A missing name is remembered for the metadata TTL (a negative entry):
/// asking again costs no backend request; a name created through the mount
/// shows at once, one created behind it after the TTL at the latest.
#[test]
fn missing_names_are_remembered_for_the_metadata_ttl() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::with_prepare(&["--metadata-ttl", "3s", "--metrics-addr", &addr], |_| {});
    let stats = || {
        sample(
            &scrape(port),
            "cachalot_backend_requests_total",
            "op=\"stat\"",
        )
    };
    // The kernel may drop its entries any time (another test's
    // drop_caches): one of three rounds without a backend request is the
    // proof; without negative entries each round asks five times.
    let remembered = (0..3).any(|round| {
        expect_errno(fs::metadata(m.m("absent")), libc::ENOENT, "first lookup");
        let asked = stats();
        for _ in 0..5 {
            expect_errno(fs::metadata(m.m("absent")), libc::ENOENT, "again");
        }
        let again = stats() - asked;
        eprintln!("round {round}: {again} backend lookups for 5 repeats");
        again == 0
    });
    assert!(
        remembered,
        "every lookup of a missing name went to the backend"
    );

    fs::write(m.m("absent"), b"made here").unwrap();
    assert_eq!(fs::read(m.m("absent")).unwrap(), b"made here");

    expect_errno(fs::metadata(m.m("behind")), libc::ENOENT, "before");
    fs::write(m.b("behind"), b"made behind").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(m.m("behind"))
            .is_ok()),
        "a name created behind the mount never showed"
    );
}

/// The mount's kernel read-ahead is the 1 MiB INIT asks for: left at the
/// kernel's 128 KiB, a sequential reader's data came in eight READs per MiB.
#[test]
fn kernel_read_ahead_is_one_mib() {
    let m = Mount::new();
    let dev = fs::metadata(m.m("")).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    assert_eq!(fs::read_to_string(&knob).unwrap().trim(), "1024", "{knob}");
}
