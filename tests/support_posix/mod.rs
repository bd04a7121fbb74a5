//! POSIX identity checks run on a mount of every backend that can store
//! what they need (file:// and nfs://): one inode per object, numbers that
//! stay, link counts and times as a kernel filesystem keeps them. Each
//! takes the mount's directory and the backing directory (ground truth).
#![allow(dead_code)] // each test binary uses some of them

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Make the kernel forget every inode it does not need (FORGET to the
/// daemon): the next stat looks each name up again.
pub fn forget_inodes() {
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "2") {
        panic!("cannot write /proc/sys/vm/drop_caches: {e}");
    }
}

fn stat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

fn ctime(m: &fs::Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

/// `link()` gives the object one more name: one `st_ino`, one link count
/// every name shows at once, a new ctime; unlinking a name drops the count
/// for the others; writing through any name changes the data every name
/// shows; a link made behind the mount joins the same inode.
pub fn hard_links_are_one_inode(mnt: &Path, backing: &Path) {
    let (m, b) = (mnt.join("links"), backing.join("links"));
    fs::create_dir(&m).unwrap();
    fs::create_dir(m.join("sub")).unwrap();
    fs::write(m.join("a"), b"one").unwrap();
    let before = stat(&m.join("a"));
    std::thread::sleep(Duration::from_millis(20));
    fs::hard_link(m.join("a"), m.join("b")).unwrap();
    let (a, bb) = (stat(&m.join("a")), stat(&m.join("b")));
    assert_eq!(a.ino(), bb.ino(), "two names of one file, one inode");
    assert_eq!((a.nlink(), bb.nlink()), (2, 2), "link counts after link()");
    assert!(
        ctime(&a) > ctime(&before),
        "link() changes the file's ctime"
    );

    fs::hard_link(m.join("b"), m.join("sub/c")).unwrap();
    for name in ["a", "b", "sub/c"] {
        assert_eq!(stat(&m.join(name)).nlink(), 3, "nlink of {name}");
    }
    assert_eq!(stat(&b.join("a")).nlink(), 3, "the backend has the links");

    fs::remove_file(m.join("b")).unwrap();
    assert_eq!(stat(&m.join("a")).nlink(), 2, "unlink drops the count");
    assert_eq!(stat(&m.join("sub/c")).nlink(), 2);

    // The same answers once the kernel forgot and looks the names up again.
    forget_inodes();
    assert_eq!(stat(&m.join("sub/c")).ino(), a.ino(), "number after forget");
    assert_eq!(stat(&m.join("a")).ino(), a.ino());

    // A write through one name is the file's new content under every name.
    fs::write(m.join("sub/c"), b"two, longer").unwrap();
    assert_eq!(fs::read(m.join("a")).unwrap(), b"two, longer");
    assert_eq!(fs::read(b.join("a")).unwrap(), b"two, longer");
    let (a2, c2) = (stat(&m.join("a")), stat(&m.join("sub/c")));
    assert_eq!((a2.ino(), a2.nlink()), (c2.ino(), 2), "still one file");
    assert_eq!(a2.len(), 11);

    // A link made behind the mount is the same inode too.
    fs::hard_link(b.join("a"), b.join("d")).unwrap();
    let d = stat(&m.join("d"));
    assert_eq!(d.ino(), a.ino(), "a link made in the backend");
    assert_eq!(d.nlink(), 3);

    // Renaming another file over one name leaves the others their file.
    fs::write(m.join("new"), b"replacement").unwrap();
    fs::rename(m.join("new"), m.join("a")).unwrap();
    assert_eq!(fs::read(m.join("a")).unwrap(), b"replacement");
    assert_eq!(fs::read(m.join("d")).unwrap(), b"two, longer");
    assert_ne!(stat(&m.join("a")).ino(), a.ino());
    assert_eq!(stat(&m.join("d")).nlink(), 2, "d and sub/c are left");
}

/// `st_ino` of an untouched file and directory stays the same while the
/// mount is busy with other names and after the kernel forgot them.
pub fn inode_numbers_stay(mnt: &Path) {
    let root = mnt.join("stable");
    fs::create_dir_all(root.join("dir")).unwrap();
    fs::create_dir_all(root.join("churn")).unwrap();
    fs::write(root.join("file"), b"x").unwrap();
    let want = (
        stat(&root.join("file")).ino(),
        stat(&root.join("dir")).ino(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (dir, stop) = (root.join("churn"), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = dir.join(format!("f{}", i % 64));
                let _ = fs::write(&p, b"churn");
                if i.is_multiple_of(3) {
                    let _ = fs::remove_file(&p);
                }
                i += 1;
            }
        })
    };
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        if round.is_multiple_of(5) {
            forget_inodes();
        }
        let got = (
            stat(&root.join("file")).ino(),
            stat(&root.join("dir")).ino(),
        );
        assert_eq!(got, want, "inode numbers changed in round {round}");
        round += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
}

/// Moving a directory to another parent changes both parents' link counts
/// (their `..` entries), seen at once.
pub fn directory_link_counts_follow_moves(mnt: &Path) {
    let root = mnt.join("dirlinks");
    fs::create_dir_all(root.join("p1/s")).unwrap();
    fs::create_dir_all(root.join("p2")).unwrap();
    assert_eq!(stat(&root.join("p1")).nlink(), 3);
    assert_eq!(stat(&root.join("p2")).nlink(), 2);
    fs::rename(root.join("p1/s"), root.join("p2/s")).unwrap();
    assert_eq!(stat(&root.join("p1")).nlink(), 2, "old parent");
    assert_eq!(stat(&root.join("p2")).nlink(), 3, "new parent");
    fs::remove_dir(root.join("p2/s")).unwrap();
    assert_eq!(stat(&root.join("p2")).nlink(), 2, "after rmdir");
}

/// Device nodes (made by root) and sockets (`bind()`) are stored in the
/// backend and come back with their kind and device number; opening a
/// socket gives ENXIO, as everywhere.
pub fn special_files_are_stored(mnt: &Path, backing: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let root = mnt.join("special");
    fs::create_dir(&root).unwrap();
    let mknod = |name: &str, format: libc::mode_t, dev: libc::dev_t| {
        let p = CString::new(root.join(name).as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        let rc = unsafe { libc::mknod(p.as_ptr(), format | 0o640, dev) };
        assert_eq!(rc, 0, "mknod {name}: {}", std::io::Error::last_os_error());
    };
    let (null, loop0) = (libc::makedev(1, 3), libc::makedev(7, 0));
    mknod("null", libc::S_IFCHR, null);
    mknod("loop", libc::S_IFBLK, loop0);
    mknod("fifo", libc::S_IFIFO, 0);
    let listener = std::os::unix::net::UnixListener::bind(root.join("sock"))
        .unwrap_or_else(|e| panic!("bind a unix socket on the mount: {e}"));
    for dir in [root.clone(), backing.join("special")] {
        let c = stat(&dir.join("null"));
        assert!(c.file_type().is_char_device(), "{}", dir.display());
        assert_eq!((c.rdev(), c.mode() & 0o7777), (null, 0o640));
        let b = stat(&dir.join("loop"));
        assert!(b.file_type().is_block_device());
        assert_eq!(b.rdev(), loop0);
        assert!(stat(&dir.join("fifo")).file_type().is_fifo());
        assert!(stat(&dir.join("sock")).file_type().is_socket());
    }
    let err = fs::File::open(root.join("sock")).expect_err("open of a socket");
    assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{err}");
    drop(listener);
    // After the kernel forgot them, they are looked up as what they are.
    forget_inodes();
    assert_eq!(stat(&root.join("null")).rdev(), null);
    for name in ["null", "loop", "fifo", "sock"] {
        fs::remove_file(root.join(name)).unwrap();
    }
}

fn fallocate(f: &fs::File, mode: i32, offset: i64, len: i64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor.
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// fallocate(2): mode 0 extends the file (on every backend); where the
/// backend can reserve space (`full`: file://), KEEP_SIZE reserves it and
/// PUNCH_HOLE / ZERO_RANGE zero a range; modes that shift data are
/// EOPNOTSUPP. Published at close like a write.
pub fn fallocate_modes(mnt: &Path, backing: &Path, full: bool) {
    use std::os::unix::fs::FileExt;
    const MIB: u64 = 1 << 20;
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(mnt.join("alloc"), &data).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("alloc"))
        .unwrap();
    fallocate(&f, 0, 0, MIB as i64).unwrap_or_else(|e| panic!("fallocate mode 0: {e}"));
    assert_eq!(f.metadata().unwrap().len(), MIB, "mode 0 extends");
    let keep = fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, MIB as i64, MIB as i64);
    let punch = fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    );
    let zero = fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 4096, 2048);
    let collapse = fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096);
    assert_eq!(
        collapse.expect_err("collapse").raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    let mut expect = data.clone();
    expect.resize(MIB as usize, 0);
    if full {
        keep.unwrap_or_else(|e| panic!("KEEP_SIZE: {e}"));
        punch.unwrap_or_else(|e| panic!("PUNCH_HOLE: {e}"));
        zero.unwrap_or_else(|e| panic!("ZERO_RANGE: {e}"));
        expect[..6144].fill(0);
    } else {
        for (what, r) in [
            ("KEEP_SIZE", keep),
            ("PUNCH_HOLE", punch),
            ("ZERO_RANGE", zero),
        ] {
            let e = r.expect_err(what);
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{what}: {e}");
        }
    }
    assert_eq!(f.metadata().unwrap().len(), MIB, "KEEP_SIZE keeps it");
    let mut head = vec![0u8; 8192];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head == expect[..8192], "content after fallocate");
    drop(f);
    let published = fs::read(backing.join("alloc")).unwrap();
    assert_eq!(published.len() as u64, MIB);
    assert!(published == expect, "published content");
    if full {
        let blocks = stat(&backing.join("alloc")).blocks() * 512;
        assert!(
            blocks >= 2 * MIB - 8192,
            "KEEP_SIZE reserved space: {blocks} bytes"
        );
    }
}

/// copy_file_range(2) through the mount copies exactly the range asked,
/// short at the end of the input, into the target's next publish.
pub fn copy_file_range_copies(mnt: &Path, backing: Option<&Path>) {
    use std::os::fd::AsRawFd;
    let src: Vec<u8> = (0..(3 << 20) + 4321u32)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    fs::write(mnt.join("copy-src"), &src).unwrap();
    let input = fs::File::open(mnt.join("copy-src")).unwrap();
    let output = fs::File::create(mnt.join("copy-dst")).unwrap();
    let copy = |off_in: i64, off_out: i64, len: usize| -> usize {
        let (mut i, mut o) = (off_in, off_out);
        let mut total = 0;
        loop {
            // SAFETY: valid descriptors and offsets.
            let n = unsafe {
                libc::copy_file_range(
                    input.as_raw_fd(),
                    &mut i,
                    output.as_raw_fd(),
                    &mut o,
                    len - total,
                    0,
                )
            };
            assert!(
                n >= 0,
                "copy_file_range: {}",
                std::io::Error::last_os_error()
            );
            if n == 0 {
                return total;
            }
            total += n as usize;
            if total == len {
                return total;
            }
        }
    };
    assert_eq!(copy(0, 0, src.len()), src.len());
    // Past the end of the input: only what is there.
    assert_eq!(copy(3 << 20, 100, 1 << 20), 4321);
    drop(output);
    let mut expect = src.clone();
    expect[100..100 + 4321].copy_from_slice(&src[3 << 20..]);
    if let Some(backing) = backing {
        assert!(fs::read(backing.join("copy-dst")).unwrap() == expect);
    }
    assert!(fs::read(mnt.join("copy-dst")).unwrap() == expect);
}

/// A file rewritten in place behind the mount while a descriptor reads it:
/// the descriptor never gets a mix of the two versions; what it can no
/// longer read of its version fails with ESTALE, and a new open reads the
/// new content.
pub fn in_place_rewrite_gives_estale(mnt: &Path, backing: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;
    const LEN: usize = 64 << 20;
    let old = vec![b'o'; LEN];
    fs::write(backing.join("inplace"), &old).unwrap();
    let reader = fs::File::open(mnt.join("inplace")).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|b| *b == b'o'));
    // Another writer rewrites the same bytes in place (no rename, same size).
    let mut w = fs::OpenOptions::new()
        .write(true)
        .open(backing.join("inplace"))
        .unwrap();
    w.seek(SeekFrom::Start(0)).unwrap();
    w.write_all(&vec![b'n'; LEN]).unwrap();
    w.sync_all().unwrap();
    drop(w);
    let mut tail = vec![0u8; 4096];
    match reader.read_exact_at(&mut tail, (LEN - 8192) as u64) {
        Ok(()) => assert!(
            tail.iter().all(|b| *b == b'o'),
            "a descriptor read bytes of another version than it opened"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }
    drop(reader);
    let fresh = fs::File::open(mnt.join("inplace")).unwrap();
    fresh.read_exact_at(&mut tail, (LEN - 8192) as u64).unwrap();
    assert!(
        tail.iter().all(|b| *b == b'n'),
        "a new open reads the new content"
    );
    fs::remove_file(mnt.join("inplace")).unwrap();
}

/// A mount with `--capacity 3MiB` over a volume that already holds a
/// 2 MiB file `old`: once the walk counted it, 2 MiB more fail with EDQUOT
/// (`old` intact, nothing published), and after deleting `old` they fit.
pub fn capacity_is_enforced(mnt: &Path) {
    const MIB: usize = 1 << 20;
    let avail = || {
        let st = nix::sys::statvfs::statvfs(mnt).expect("statvfs");
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while avail() > MIB as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the walk never counted the 2 MiB already there (available {})",
            avail()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let old = std::fs::read(mnt.join("old")).unwrap();
    assert_eq!(old.len(), 2 * MIB);
    let err = std::fs::write(mnt.join("new"), vec![7u8; 2 * MIB]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err:?}");
    assert!(std::fs::metadata(mnt.join("new")).is_err());
    assert_eq!(std::fs::read(mnt.join("old")).unwrap(), old);
    std::fs::remove_file(mnt.join("old")).unwrap();
    std::fs::write(mnt.join("new"), vec![7u8; 2 * MIB]).unwrap();
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), vec![7u8; 2 * MIB]);
}
