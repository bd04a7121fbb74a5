//! Model-based random testing in the spirit of fsx: a seeded generator of file
//! operations applies every operation both to a cachalot mount (over a temp backing
//! directory) and to a plain reference directory; after every step the results and errno
//! values must match, and file contents must match byte for byte.
//!
//! - Seed: `CACHALOT_SEED=<n>` runs that one seed (printed by every run, and in every
//!   failure); otherwise each test picks a random seed. `CACHALOT_OPS=<n>` sets the number
//!   of operations. `CACHALOT_LONG=1` runs 100 000 operations per seed.
//! - On a mismatch the test prints the seed, the last operations, and a shrunk operation
//!   log (prefixes re-run and chunks dropped, each on a fresh mount, within
//!   `CACHALOT_SHRINK_SECS`, default 120) that it also stores as JSON; replay it with
//!   `CACHALOT_FSX_REPLAY=<file> cargo test --test fuse model_fsx::replay_from_env -- --nocapture`.
//! - Modelled differences from a local filesystem (not reported): data written through
//!   an open descriptor reaches the backing directory only at close/fsync (the backing dir
//!   is compared with the reference only while no descriptor is open, and at the end).
//!   Hard links are not generated (a rewrite breaks them by design).
//! - Bugs found by the model are kept as deterministic tests in module `found` at the
//!   end (all fixed now). The switches that kept them out of the random runs remain for
//!   bisecting (`Config::replace_open_files`, `Config::tolerate_known_bugs`); every run
//!   uses the strict setting: open files are unlinked, renamed and replaced, and every
//!   read through every descriptor must match.
//! - The backend is a parameter ([`SourceKind`]); only `file://` exists now, NFS and S3
//!   plug into [`build_target`].

use crate::common;
use crate::support_nfs;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use common::*;

// ---------------------------------------------------------------------------------------
// The namespace: small, so that operations collide.
// ---------------------------------------------------------------------------------------

const FILES: &[&str] = &["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"];
const DIRS: &[&str] = &["d0", "d1", "d2"];
/// Open descriptors at most (per world).
const NSLOTS: usize = 6;
/// Deepest directory the generator creates (keeps paths short).
const MAX_DEPTH: usize = 3;
/// Full comparison of both trees every this many operations.
const CHECK_EVERY: usize = 150;
/// Restart the daemon every this many operations (see [`Op::Remount`]).
const REMOUNT_EVERY: usize = 5000;
const MODES: &[u32] = &[0o644, 0o600, 0o640, 0o755, 0o664];

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Open {
        slot: usize,
        path: String,
        flags: i32,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    Pwrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// write(2) at the descriptor's position (O_APPEND: at the end).
    Write {
        slot: usize,
        len: usize,
        seed: u64,
    },
    Lseek {
        slot: usize,
        off: i64,
        whence: i32,
    },
    Pread {
        slot: usize,
        off: u64,
        len: usize,
    },
    /// read(2) at the descriptor's position.
    Read {
        slot: usize,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        len: u64,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Fsync {
        slot: usize,
    },
    Fstat {
        slot: usize,
    },
    Stat {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    /// link(2): one more name for a file (st_ino and st_nlink are compared).
    Link {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Readdir {
        path: String,
    },
    /// Open O_RDONLY, read everything, close: a second handle next to the open ones.
    ReadWhole {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    /// posix_fadvise(DONTNEED): drop the kernel's page cache of the file so the next
    /// reads reach the daemon (no effect on the reference's results).
    DropCache {
        slot: usize,
    },
    /// Compare both trees completely (and the backing dir if nothing is open).
    Check,
    /// Close every descriptor (results compared), so that the next check compares the
    /// backing dir too.
    CloseAll,
    /// Close everything, compare everything, restart the daemon (cold inode table and
    /// memory, page files kept), compare again. Also keeps every daemon younger than the
    /// harness watchdog in long runs.
    Remount,
}

fn flags_str(flags: i32) -> String {
    let mut v = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "RDONLY",
        libc::O_WRONLY => "WRONLY",
        _ => "RDWR",
    }];
    for (f, n) in [
        (libc::O_CREAT, "CREAT"),
        (libc::O_EXCL, "EXCL"),
        (libc::O_TRUNC, "TRUNC"),
        (libc::O_APPEND, "APPEND"),
    ] {
        if flags & f != 0 {
            v.push(n);
        }
    }
    v.join("|")
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Open {
                slot,
                path,
                flags,
                mode,
            } => write!(f, "open #{slot} {path} {} {mode:o}", flags_str(*flags)),
            Op::Close { slot } => write!(f, "close #{slot}"),
            Op::Pwrite {
                slot,
                off,
                len,
                seed,
            } => write!(f, "pwrite #{slot} off={off} len={len} seed={seed}"),
            Op::Write { slot, len, seed } => write!(f, "write #{slot} len={len} seed={seed}"),
            Op::Lseek { slot, off, whence } => {
                let w = match *whence {
                    libc::SEEK_SET => "SET",
                    libc::SEEK_CUR => "CUR",
                    _ => "END",
                };
                write!(f, "lseek #{slot} {off} {w}")
            }
            Op::Pread { slot, off, len } => write!(f, "pread #{slot} off={off} len={len}"),
            Op::Read { slot, len } => write!(f, "read #{slot} len={len}"),
            Op::Ftruncate { slot, len } => write!(f, "ftruncate #{slot} {len}"),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::Fsync { slot } => write!(f, "fsync #{slot}"),
            Op::Fstat { slot } => write!(f, "fstat #{slot}"),
            Op::Stat { path } => write!(f, "stat {path}"),
            Op::Rename { from, to } => write!(f, "rename {from} -> {to}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Link { from, to } => write!(f, "link {from} -> {to}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Readdir { path } => write!(f, "readdir {path:?}"),
            Op::ReadWhole { path } => write!(f, "read-whole {path}"),
            Op::Chmod { path, mode } => write!(f, "chmod {path} {mode:o}"),
            Op::DropCache { slot } => write!(f, "drop-cache #{slot}"),
            Op::Check => write!(f, "check"),
            Op::CloseAll => write!(f, "close-all"),
            Op::Remount => write!(f, "remount"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// The operation did not apply (empty slot, occupied slot for open).
    Skip,
    Ok,
    Err(i32),
    Opened,
    Int(i64),
    Data(Vec<u8>),
    Stat {
        kind: char,
        size: Option<u64>,
        mode: u32,
        nlink: u64,
    },
    Names(Vec<String>),
}

fn describe(o: &Out) -> String {
    match o {
        Out::Err(e) => format!("Err({} {})", e, errno_text(*e)),
        Out::Data(d) => format!("Data(len {}, head {:02x?})", d.len(), &d[..d.len().min(16)]),
        other => format!("{other:?}"),
    }
}

fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

fn data_diff(a: &[u8], b: &[u8]) -> String {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    format!(
        "mount len {}, reference len {}, first differing byte at {:?}",
        a.len(),
        b.len(),
        first.or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
    )
}

// ---------------------------------------------------------------------------------------
// One world: a root directory and the open descriptors.
// ---------------------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn rc(r: libc::c_int) -> Out {
    if r == 0 {
        Out::Ok
    } else {
        Out::Err(errno())
    }
}

fn stat_out(st: &libc::stat) -> Out {
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        _ => 'o',
    };
    Out::Stat {
        kind,
        size: (kind == 'f').then_some(st.st_size as u64),
        mode: st.st_mode & 0o7777,
        nlink: st.st_nlink,
    }
}

struct World {
    root: PathBuf,
    fds: [Option<i32>; NSLOTS],
}

impl World {
    fn new(root: &Path) -> World {
        World {
            root: root.to_path_buf(),
            fds: [None; NSLOTS],
        }
    }

    fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn c(&self, rel: &str) -> CString {
        cpath(&self.full(rel))
    }

    fn any_open(&self) -> bool {
        self.fds.iter().any(Option::is_some)
    }

    fn close_slot(&mut self, slot: usize) -> Out {
        match self.fds[slot].take() {
            None => Out::Skip,
            Some(fd) => rc(unsafe { libc::close(fd) }),
        }
    }

    fn apply(&mut self, op: &Op) -> Out {
        unsafe {
            match op {
                Op::Open {
                    slot,
                    path,
                    flags,
                    mode,
                } => {
                    if self.fds[*slot].is_some() {
                        return Out::Skip;
                    }
                    let fd = libc::open(
                        self.c(path).as_ptr(),
                        flags | libc::O_CLOEXEC,
                        *mode as libc::c_uint,
                    );
                    if fd < 0 {
                        Out::Err(errno())
                    } else {
                        self.fds[*slot] = Some(fd);
                        Out::Opened
                    }
                }
                Op::Close { slot } => self.close_slot(*slot),
                Op::Pwrite {
                    slot,
                    off,
                    len,
                    seed,
                } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    let data = pattern(*len, *seed);
                    let n = libc::pwrite(
                        fd,
                        data.as_ptr() as *const libc::c_void,
                        data.len(),
                        *off as libc::off_t,
                    );
                    if n < 0 {
                        Out::Err(errno())
                    } else {
                        Out::Int(n as i64)
                    }
                }
                Op::Write { slot, len, seed } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    let data = pattern(*len, *seed);
                    let n = libc::write(fd, data.as_ptr() as *const libc::c_void, data.len());
                    if n < 0 {
                        Out::Err(errno())
                    } else {
                        Out::Int(n as i64)
                    }
                }
                Op::Lseek { slot, off, whence } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    // Directory offsets are filesystem-specific cookies (ext4 reports
                    // i64::MAX for SEEK_END): not comparable.
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        return Out::Skip;
                    }
                    let r = libc::lseek(fd, *off as libc::off_t, *whence);
                    if r < 0 {
                        Out::Err(errno())
                    } else {
                        Out::Int(r as i64)
                    }
                }
                Op::Pread { slot, off, len } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    let mut buf = vec![0u8; *len];
                    let n = libc::pread(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        *off as libc::off_t,
                    );
                    if n < 0 {
                        Out::Err(errno())
                    } else {
                        buf.truncate(n as usize);
                        Out::Data(buf)
                    }
                }
                Op::Read { slot, len } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    let mut buf = vec![0u8; *len];
                    let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
                    if n < 0 {
                        Out::Err(errno())
                    } else {
                        buf.truncate(n as usize);
                        Out::Data(buf)
                    }
                }
                Op::Ftruncate { slot, len } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    rc(libc::ftruncate(fd, *len as libc::off_t))
                }
                Op::Truncate { path, len } => {
                    rc(libc::truncate(self.c(path).as_ptr(), *len as libc::off_t))
                }
                Op::Fsync { slot } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    rc(libc::fsync(fd))
                }
                Op::Fstat { slot } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::fstat(fd, &mut st) == 0 {
                        stat_out(&st)
                    } else {
                        Out::Err(errno())
                    }
                }
                Op::Stat { path } => {
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::lstat(self.c(path).as_ptr(), &mut st) == 0 {
                        stat_out(&st)
                    } else {
                        Out::Err(errno())
                    }
                }
                Op::Rename { from, to } => {
                    rc(libc::rename(self.c(from).as_ptr(), self.c(to).as_ptr()))
                }
                Op::Unlink { path } => rc(libc::unlink(self.c(path).as_ptr())),
                Op::Link { from, to } => rc(libc::link(self.c(from).as_ptr(), self.c(to).as_ptr())),
                Op::Mkdir { path, mode } => {
                    rc(libc::mkdir(self.c(path).as_ptr(), *mode as libc::mode_t))
                }
                Op::Rmdir { path } => rc(libc::rmdir(self.c(path).as_ptr())),
                Op::Readdir { path } => match fs::read_dir(self.full(path)) {
                    Ok(rd) => {
                        let mut names = Vec::new();
                        for e in rd {
                            match e {
                                Ok(e) => names.push(e.file_name().to_string_lossy().into_owned()),
                                Err(e) => return Out::Err(e.raw_os_error().unwrap_or(-1)),
                            }
                        }
                        names.sort();
                        Out::Names(names)
                    }
                    Err(e) => Out::Err(e.raw_os_error().unwrap_or(-1)),
                },
                Op::ReadWhole { path } => {
                    let fd = libc::open(self.c(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Out::Err(errno());
                    }
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
                        if n < 0 {
                            let e = errno();
                            libc::close(fd);
                            return Out::Err(e);
                        }
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n as usize]);
                    }
                    if libc::close(fd) != 0 {
                        return Out::Err(errno());
                    }
                    Out::Data(out)
                }
                Op::Chmod { path, mode } => {
                    rc(libc::chmod(self.c(path).as_ptr(), *mode as libc::mode_t))
                }
                Op::DropCache { slot } => {
                    let Some(fd) = self.fds[*slot] else {
                        return Out::Skip;
                    };
                    libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
                    Out::Ok
                }
                Op::Check | Op::CloseAll | Op::Remount => Out::Ok,
            }
        }
    }

    fn close_all(&mut self) -> Vec<(usize, Out)> {
        (0..NSLOTS).map(|s| (s, self.close_slot(s))).collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for fd in self.fds.iter_mut().filter_map(Option::take) {
            unsafe { libc::close(fd) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Whole-tree comparison
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Entry {
    File {
        mode: u32,
        nlink: u64,
        data: Vec<u8>,
    },
    Dir {
        mode: u32,
        nlink: u64,
    },
    Other {
        mode: u32,
    },
}

/// Names that are links of one file, as sets of paths (st_ino decides).
type LinkGroups = BTreeSet<Vec<String>>;

/// Everything below `root` (relative path -> entry), reading files
/// completely, and which names share an inode.
fn tree_and_links(root: &Path) -> Result<(BTreeMap<String, Entry>, LinkGroups), String> {
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| format!("read_dir {}: {e}", d.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("read_dir {}: {e}", d.display()))?;
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).map_err(|e| format!("lstat {rel}: {e}"))?;
            let mode = md.mode() & 0o7777;
            let nlink = md.nlink();
            let entry = if md.is_dir() {
                stack.push(p.clone());
                Entry::Dir { mode, nlink }
            } else if md.is_file() {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
                let data = read_all(&p).map_err(|e| format!("read {rel}: {e}"))?;
                if data.len() as u64 != md.len() {
                    return Err(format!(
                        "{rel}: stat size {} but {} bytes read",
                        md.len(),
                        data.len()
                    ));
                }
                Entry::File { mode, nlink, data }
            } else {
                Entry::Other { mode }
            };
            out.insert(rel, entry);
        }
    }
    let links = by_ino
        .into_values()
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    Ok((out, links))
}

fn compare_trees(what: &str, actual: &Path, reference: &Path) -> Result<(), String> {
    let (a, links_a) = tree_and_links(actual).map_err(|e| format!("{what}: {e}"))?;
    let (r, links_r) = tree_and_links(reference).map_err(|e| format!("reference: {e}"))?;
    let names_a: BTreeSet<&String> = a.keys().collect();
    let names_r: BTreeSet<&String> = r.keys().collect();
    if names_a != names_r {
        return Err(format!(
            "{what}: names differ: only in {what}: {:?}; only in the reference: {:?}",
            names_a.difference(&names_r).collect::<Vec<_>>(),
            names_r.difference(&names_a).collect::<Vec<_>>()
        ));
    }
    for (name, ea) in &a {
        let er = &r[name];
        if ea != er {
            let detail = match (ea, er) {
                (
                    Entry::File {
                        mode: ma,
                        nlink: na,
                        data: da,
                    },
                    Entry::File {
                        mode: mr,
                        nlink: nr,
                        data: dr,
                    },
                ) => format!(
                    "mode {ma:o} vs {mr:o}; nlink {na} vs {nr}; {}",
                    data_diff(da, dr)
                ),
                (x, y) => format!("{x:?} vs {y:?}"),
            };
            return Err(format!(
                "{what}: {name} differs from the reference: {detail}"
            ));
        }
    }
    if links_a != links_r {
        return Err(format!(
            "{what}: names sharing an inode differ: {:?} vs the reference's {:?}",
            links_a.difference(&links_r).collect::<Vec<_>>(),
            links_r.difference(&links_a).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Targets: the filesystem under test, built per backend kind.
// ---------------------------------------------------------------------------------------

/// Which backend the mount under test uses. NFS and S3 are added here later.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum SourceKind {
    Local,
    /// Userspace NFSv3 against nfs-ganesha on 127.0.0.1 (see tests/support_nfs).
    Nfs,
}

/// Mount options derived from the seed (varied so that several code paths are covered).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Config {
    kind: SourceKind,
    page_size: String,
    metadata_ttl: String,
    /// See [`Gen::replace_open_files`].
    replace_open_files: bool,
    /// Forgive mismatched reads through descriptors whose file was published by another
    /// descriptor or renamed while open (bugs, see the `#[ignore]`d tests below): the
    /// descriptor is closed on both sides and the run goes on.
    tolerate_known_bugs: bool,
}

impl Config {
    fn for_seed(seed: u64) -> Config {
        let page_size = ["4KiB", "16KiB", "1MiB"][(seed % 3) as usize];
        let metadata_ttl = ["1s", "0s"][((seed / 3) % 2) as usize];
        Config {
            kind: SourceKind::Local,
            page_size: page_size.into(),
            metadata_ttl: metadata_ttl.into(),
            replace_open_files: true,
            tolerate_known_bugs: false,
        }
    }
}

/// A mounted filesystem under test. `backing()` is where its data lands, when the backend
/// is a directory we can read (None for object stores: compared through a second mount).
enum Target {
    Local(Mount),
    /// nfs-ganesha (shared by this test binary) exporting a directory of the local disk.
    Nfs {
        dir: PathBuf,
        url: String,
        args: Vec<String>,
        mounted: Option<support_nfs::mount::Mounted>,
        _server: std::sync::Arc<support_nfs::Ganesha>,
    },
}

impl Target {
    fn root(&self) -> &Path {
        match self {
            Target::Local(m) => m.mnt(),
            Target::Nfs { mounted, .. } => &mounted.as_ref().expect("mounted").mnt,
        }
    }

    fn backing(&self) -> Option<&Path> {
        match self {
            Target::Local(m) => Some(m.backing()),
            Target::Nfs { dir, .. } => Some(dir),
        }
    }

    /// Restart the daemon on the same data (and, where the harness allows, cache).
    fn remount(&mut self) {
        match self {
            Target::Local(m) => m.remount(),
            Target::Nfs {
                url, args, mounted, ..
            } => {
                *mounted = None;
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                *mounted = Some(support_nfs::mount::mount(url, &a).expect("NFS remount"));
            }
        }
    }
}

fn build_target(cfg: &Config) -> Target {
    match cfg.kind {
        SourceKind::Local => Target::Local(Mount::with_args(&[
            "--page-size",
            &cfg.page_size,
            "--metadata-ttl",
            &cfg.metadata_ttl,
        ])),
        SourceKind::Nfs => {
            static AREAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let server = support_nfs::ganesha();
            let n = AREAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (dir, url) = server.area(&format!("fsx-{}-{n}", std::process::id()));
            // the NFS harness mounts with --metadata-ttl 0s
            let args = vec!["--page-size".to_string(), cfg.page_size.clone()];
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let mounted = support_nfs::mount::mount(&url, &a)
                .unwrap_or_else(|e| panic!("NFS mount of {url}: {e:?}"));
            Target::Nfs {
                dir,
                url,
                args,
                mounted: Some(mounted),
                _server: server,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A session: the target and the reference, stepped in lockstep.
// ---------------------------------------------------------------------------------------

struct Session {
    // NB: worlds close their descriptors before the mount is torn down.
    a: World,
    r: World,
    target: Target,
    _reference: tempfile::TempDir,
    steps: usize,
    /// Known-bug tolerance (see [`Config::tolerate_known_bugs`]).
    tolerate: bool,
    /// Per slot: a publish of its file happened while it was open (bug: reads may
    /// return the old version's bytes).
    stale: [bool; NSLOTS],
    /// Per slot: its file or a directory above it was renamed while it was open (bug:
    /// reads follow the old path: ENOENT, or another file's bytes).
    moved: [bool; NSLOTS],
    /// Mismatches forgiven because of the two bugs above.
    tolerated: usize,
    /// See [`Config::replace_open_files`].
    replace_open_files: bool,
    /// The mount's metadata TTL is zero (fstat always asks the daemon).
    zero_ttl: bool,
    /// The backend is NFS.
    nfs: bool,
    /// Operations not run because they would hit a known bug.
    avoided: usize,
    /// Full comparisons of the mount and of the backing dir with the reference.
    checks: (usize, usize),
}

/// Inode number of the reference's descriptor in `slot`.
fn slot_ino(w: &World, slot: usize) -> Option<u64> {
    let fd = w.fds[slot]?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// Reference path of every inode below the root.
fn paths_by_ino(w: &World) -> std::collections::HashMap<u64, String> {
    let mut out = std::collections::HashMap::new();
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(w.full(&d)) else {
            continue;
        };
        for e in rd.flatten() {
            let rel = join(&d, &e.file_name().to_string_lossy());
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(rel.clone());
            }
            out.insert(md.ino(), rel);
        }
    }
    out
}

impl Session {
    fn new(cfg: &Config) -> Session {
        let target = build_target(cfg);
        let reference = tempfile::Builder::new()
            .prefix("cachalot-fsx-ref-")
            .tempdir()
            .unwrap();
        fs::set_permissions(reference.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Session {
            a: World::new(target.root()),
            r: World::new(reference.path()),
            target,
            _reference: reference,
            steps: 0,
            tolerate: cfg.tolerate_known_bugs,
            zero_ttl: cfg.metadata_ttl == "0s",
            nfs: matches!(cfg.kind, SourceKind::Nfs),
            stale: [false; NSLOTS],
            moved: [false; NSLOTS],
            tolerated: 0,
            replace_open_files: cfg.replace_open_files,
            avoided: 0,
            checks: (0, 0),
        }
    }

    /// True if `op` must not run because it would hit a known bug (or unlink/replace an
    /// open file when that is switched off). Decided at run time, so shrunk logs obey it.
    fn avoid(&self, op: &Op) -> bool {
        let is_open = |path: &str| {
            let inos: Vec<u64> = (0..NSLOTS).filter_map(|s| slot_ino(&self.r, s)).collect();
            fs::symlink_metadata(self.r.full(path)).is_ok_and(|m| inos.contains(&m.ino()))
        };
        match op {
            Op::Unlink { path } | Op::Rmdir { path } if !self.replace_open_files => is_open(path),
            // bug (NFS): a chmod makes the open readers of the file fail with ESTALE (see
            // found::nfs_chmod_of_an_open_file_keeps_its_readers_working)
            Op::Chmod { path, .. } if self.nfs && self.tolerate => is_open(path),
            Op::Rename { from, to } if from != to => {
                let from_exists = fs::symlink_metadata(self.r.full(from)).is_ok();
                if !self.replace_open_files && from_exists && is_open(to) {
                    return true;
                }
                // bug: renaming a new, unpublished file over an existing one leaves the
                // old file in the backend (see rename_of_a_new_file_over_an_existing_one...)
                if let (true, Some(b)) = (self.tolerate, self.target.backing()) {
                    let pending = fs::symlink_metadata(self.a.full(from)).is_ok()
                        && fs::symlink_metadata(b.join(from)).is_err();
                    if pending && fs::symlink_metadata(b.join(to)).is_ok() {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }

    /// Before `op`: which open slots it will make stale or moved if it succeeds.
    fn effects(&self, op: &Op) -> (Vec<usize>, Vec<usize>) {
        let open: Vec<usize> = (0..NSLOTS).filter(|s| self.r.fds[*s].is_some()).collect();
        let same_file = |ino: Option<u64>| -> Vec<usize> {
            open.iter()
                .copied()
                .filter(|s| ino.is_some() && slot_ino(&self.r, *s) == ino)
                .collect()
        };
        match op {
            // close/fsync publish the file's write session, if any
            Op::Close { slot } => {
                let ino = slot_ino(&self.r, *slot);
                let v = same_file(ino).into_iter().filter(|s| s != slot).collect();
                (v, vec![])
            }
            Op::Fsync { slot } => (same_file(slot_ino(&self.r, *slot)), vec![]),
            Op::Truncate { path, .. } => {
                let ino = fs::symlink_metadata(self.r.full(path))
                    .ok()
                    .map(|m| m.ino());
                (same_file(ino), vec![])
            }
            Op::Rename { from, to } if from != to => {
                let paths = paths_by_ino(&self.r);
                let moved = open
                    .iter()
                    .copied()
                    .filter(|s| {
                        slot_ino(&self.r, *s)
                            .and_then(|i| paths.get(&i))
                            .is_some_and(|p| p == from || p.starts_with(&format!("{from}/")))
                    })
                    .collect();
                (vec![], moved)
            }
            _ => (vec![], vec![]),
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), Mismatch> {
        self.steps += 1;
        if let Op::Check = op {
            return self.check().map_err(|msg| Mismatch {
                sig: format!("check:{}", msg.split(':').next().unwrap_or("")),
                msg,
            });
        }
        if let Op::CloseAll = op {
            return self.close_all().map_err(|msg| Mismatch {
                sig: "close-all".into(),
                msg,
            });
        }
        if let Op::Remount = op {
            return self.finish().map_err(|msg| Mismatch {
                sig: "remount".into(),
                msg,
            });
        }
        if self.avoid(op) {
            self.avoided += 1;
            return Ok(());
        }
        let (stales, moves) = self.effects(op);
        let oa = self.a.apply(op);
        let or = self.r.apply(op);
        if or != Out::Skip && !matches!(or, Out::Err(_)) {
            for s in stales {
                self.stale[s] = true;
            }
            for s in moves {
                self.moved[s] = true;
            }
        }
        let read_slot = match op {
            Op::Pread { slot, .. } | Op::Read { slot, .. } => Some(*slot),
            _ => None,
        };
        if let Some(slot) =
            read_slot.filter(|s| self.tolerate && (self.stale[*s] || self.moved[*s]))
        {
            // Such a read may have put the wrong bytes into the kernel's page cache of
            // this inode, and a short read makes the kernel shrink its i_size (then an
            // O_APPEND write lands in the middle of the file!). Drop the pages and
            // reload the attributes so the damage cannot spread: with a zero TTL fstat
            // asks the daemon; otherwise a no-op chmod (its reply carries the size).
            if let Some(fd) = self.a.fds[slot] {
                unsafe {
                    libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
                    let mut st: libc::stat = std::mem::zeroed();
                    if libc::fstat(fd, &mut st) == 0 && !self.zero_ttl {
                        libc::fchmod(fd, st.st_mode & 0o7777);
                    }
                }
            }
            if oa != or && self.tolerate {
                self.tolerated += 1;
                self.a.close_slot(slot);
                self.r.close_slot(slot);
                self.stale[slot] = false;
                self.moved[slot] = false;
                return Ok(());
            }
        }
        if let Op::Close { slot } = op {
            self.stale[*slot] = false;
            self.moved[*slot] = false;
        }
        if let (Op::Open { slot, .. }, Out::Opened) = (op, &or) {
            self.stale[*slot] = false;
            self.moved[*slot] = false;
        }
        if oa == or {
            return Ok(());
        }
        // keep both worlds' descriptor tables alike after a mismatch of an open
        if let Op::Open { slot, .. } = op {
            self.a.close_slot(*slot);
            self.r.close_slot(*slot);
        }
        let detail = match (&oa, &or) {
            (Out::Data(x), Out::Data(y)) => data_diff(x, y),
            _ => String::new(),
        };
        Err(Mismatch {
            sig: format!("{}:{}", op_kind(op), out_kind(&oa)),
            msg: format!(
                "`{op}`: mount gave {}, reference gave {} {detail}",
                describe(&oa),
                describe(&or)
            ),
        })
    }

    /// Compare the mount with the reference; and the backing dir too while no
    /// descriptor is open (written data is published at close/fsync).
    fn check(&mut self) -> Result<(), String> {
        compare_trees("mount", self.target.root(), &self.r.root)?;
        self.checks.0 += 1;
        if !self.a.any_open() {
            self.checks.1 += 1;
            if let Some(b) = self.target.backing() {
                // close(2) returns before the kernel's RELEASE reaches the
                // daemon: the hidden object of a file unlinked while open
                // (or the temporary file of a write nobody will publish)
                // goes a moment later.
                wait_until(Duration::from_secs(2), || all_temp_files(b).is_empty());
                compare_trees("backing dir", b, &self.r.root)?;
                let temps = all_temp_files(b);
                if !temps.is_empty() {
                    return Err(format!("temp files left with nothing open: {temps:?}"));
                }
            }
        }
        Ok(())
    }

    /// Close every descriptor on both sides; the results must match.
    fn close_all(&mut self) -> Result<(), String> {
        let ca = self.a.close_all();
        let cr = self.r.close_all();
        self.stale = [false; NSLOTS];
        self.moved = [false; NSLOTS];
        for ((s, oa), (_, or)) in ca.iter().zip(&cr) {
            if oa != or {
                return Err(format!(
                    "close #{s}: mount gave {}, reference gave {}",
                    describe(oa),
                    describe(or)
                ));
            }
        }
        Ok(())
    }

    /// Close everything (close results must match), compare everything, remount and
    /// compare again (cold daemon: inode table and memory gone, page files reused).
    fn finish(&mut self) -> Result<(), String> {
        self.close_all()?;
        self.check()?;
        self.target.remount();
        // (the mountpoint may change with the remount; nothing is open)
        self.a = World::new(self.target.root());
        compare_trees("mount after remount", self.target.root(), &self.r.root)
    }
}

// ---------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------

/// What the generator knows: the reference tree and which slots are open.
struct Known {
    files: Vec<(String, u64)>,
    dirs: Vec<String>, // includes "" (the root)
    open: Vec<usize>,
    free: Vec<usize>,
    /// Inode numbers of the reference's open files.
    open_inos: Vec<u64>,
}

impl Known {
    /// `path` (in the reference) is a file some descriptor has open.
    fn is_open(&self, r: &World, path: &str) -> bool {
        fs::symlink_metadata(r.full(path)).is_ok_and(|m| self.open_inos.contains(&m.ino()))
    }
}

fn known(r: &World) -> Known {
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    let mut stack = vec![String::new()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(r.full(&d)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if d.is_empty() {
                name
            } else {
                format!("{d}/{name}")
            };
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                dirs.push(rel.clone());
                stack.push(rel);
            } else {
                files.push((rel, md.len()));
            }
        }
    }
    files.sort();
    dirs.sort();
    let open = (0..NSLOTS).filter(|s| r.fds[*s].is_some()).collect();
    let free = (0..NSLOTS).filter(|s| r.fds[*s].is_none()).collect();
    let open_inos = r
        .fds
        .iter()
        .flatten()
        .map(|fd| {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            unsafe { libc::fstat(*fd, &mut st) };
            st.st_ino
        })
        .collect();
    Known {
        files,
        dirs,
        open,
        free,
        open_inos,
    }
}

fn pick<'a, T>(rng: &mut SmallRng, v: &'a [T]) -> &'a T {
    &v[rng.random_range(0..v.len())]
}

fn join(parent: &str, leaf: &str) -> String {
    if parent.is_empty() {
        leaf.to_string()
    } else {
        format!("{parent}/{leaf}")
    }
}

struct Gen {
    rng: SmallRng,
    page: u64,
    /// Generate unlink/rmdir/rename-over of files and directories that a descriptor has
    /// open. Off by default: see `found::unlinked_open_file_stays_readable_and_writable`
    /// and `found::removed_open_directory_can_still_be_fstated` (bugs).
    replace_open_files: bool,
}

impl Gen {
    fn parent(&mut self, k: &Known) -> String {
        if self.rng.random_bool(0.9) {
            let shallow: Vec<&String> = k
                .dirs
                .iter()
                .filter(|d| d.is_empty() || d.split('/').count() < MAX_DEPTH)
                .collect();
            pick(&mut self.rng, &shallow).to_string()
        } else {
            // a parent that is missing or not a directory
            pick(&mut self.rng, &["nx", "f0", "d0/f1", "d1/nx"]).to_string()
        }
    }

    fn file_path(&mut self, k: &Known) -> String {
        if !k.files.is_empty() && self.rng.random_bool(0.65) {
            return pick(&mut self.rng, &k.files).0.clone();
        }
        let parent = self.parent(k);
        let leaf = if self.rng.random_bool(0.9) {
            pick(&mut self.rng, FILES)
        } else {
            pick(&mut self.rng, DIRS)
        };
        join(&parent, leaf)
    }

    fn dir_path(&mut self, k: &Known) -> String {
        if k.dirs.len() > 1 && self.rng.random_bool(0.5) {
            return pick(&mut self.rng, &k.dirs[1..]).clone();
        }
        let parent = self.parent(k);
        let leaf = if self.rng.random_bool(0.9) {
            pick(&mut self.rng, DIRS)
        } else {
            pick(&mut self.rng, FILES)
        };
        join(&parent, leaf)
    }

    fn any_path(&mut self, k: &Known) -> String {
        if self.rng.random_bool(0.7) {
            self.file_path(k)
        } else {
            self.dir_path(k)
        }
    }

    /// A size that is usually small, sometimes spans pages, rarely big or empty.
    fn len(&mut self) -> usize {
        let p = self.page as usize;
        match self.rng.random_range(0..100) {
            0..=5 => self.rng.random_range(0..3),
            6..=65 => self.rng.random_range(1..4096),
            66..=85 => self.rng.random_range(4096..40_000),
            86..=94 => p.min(16384) * self.rng.random_range(1..3) + self.rng.random_range(0..3) - 1,
            _ => self.rng.random_range(40_000..200_000),
        }
    }

    /// An offset relative to a file of `size` bytes: inside, at the end, beyond (a
    /// hole), or around a page boundary.
    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.random_range(0..100) {
            0..=9 => 0,
            10..=49 => self.rng.random_range(0..=size),
            50..=59 => size,
            60..=74 => size + self.rng.random_range(1..20_000),
            75..=94 => {
                let k = self.rng.random_range(0..=((size / self.page) + 1).min(4));
                (k * self.page + self.rng.random_range(0..3)).saturating_sub(1)
            }
            _ => self.rng.random_range(0..300_000),
        }
    }

    fn size_of_slot(&self, _slot: usize, k: &Known) -> u64 {
        // sizes of the slot's file are not tracked (renames); any file's size is a
        // good enough scale for offsets
        k.files.iter().map(|f| f.1).max().unwrap_or(0)
    }

    fn op(&mut self, k: &Known, r: &World) -> Op {
        let has_open = !k.open.is_empty();
        loop {
            let choice = self.rng.random_range(0..124);
            let op = match choice {
                0..=13 if !k.free.is_empty() => {
                    let slot = *pick(&mut self.rng, &k.free);
                    let path = self.file_path(k);
                    let acc = match self.rng.random_range(0..100) {
                        0..=29 => libc::O_RDONLY,
                        30..=54 => libc::O_WRONLY,
                        _ => libc::O_RDWR,
                    };
                    let mut flags = acc;
                    if self.rng.random_bool(0.5) {
                        flags |= libc::O_CREAT;
                        if self.rng.random_bool(0.2) {
                            flags |= libc::O_EXCL;
                        }
                    }
                    // O_RDONLY|O_TRUNC is unspecified by POSIX: not generated.
                    if acc != libc::O_RDONLY && self.rng.random_bool(0.15) {
                        flags |= libc::O_TRUNC;
                    }
                    if self.rng.random_bool(0.15) {
                        flags |= libc::O_APPEND;
                    }
                    Op::Open {
                        slot,
                        path,
                        flags,
                        mode: *pick(&mut self.rng, MODES),
                    }
                }
                14..=22 if has_open => Op::Close {
                    slot: *pick(&mut self.rng, &k.open),
                },
                23..=38 if has_open => {
                    let slot = *pick(&mut self.rng, &k.open);
                    let size = self.size_of_slot(slot, k);
                    Op::Pwrite {
                        slot,
                        off: self.offset(size),
                        len: self.len(),
                        seed: self.rng.random(),
                    }
                }
                39..=45 if has_open => Op::Write {
                    slot: *pick(&mut self.rng, &k.open),
                    len: self.len(),
                    seed: self.rng.random(),
                },
                46..=49 if has_open => {
                    let slot = *pick(&mut self.rng, &k.open);
                    let (off, whence) = match self.rng.random_range(0..4) {
                        0 => (
                            self.offset(self.size_of_slot(slot, k)) as i64,
                            libc::SEEK_SET,
                        ),
                        1 => (0, libc::SEEK_END),
                        2 => (self.rng.random_range(1..10_000), libc::SEEK_END),
                        _ => (0, libc::SEEK_CUR),
                    };
                    Op::Lseek { slot, off, whence }
                }
                50..=61 if has_open => {
                    let slot = *pick(&mut self.rng, &k.open);
                    let size = self.size_of_slot(slot, k);
                    Op::Pread {
                        slot,
                        off: self.offset(size),
                        len: self.len().max(1),
                    }
                }
                62..=65 if has_open => Op::Read {
                    slot: *pick(&mut self.rng, &k.open),
                    len: self.len().max(1),
                },
                66..=69 if has_open => {
                    let slot = *pick(&mut self.rng, &k.open);
                    let size = self.size_of_slot(slot, k);
                    let len = match self.rng.random_range(0..4) {
                        0 => 0,
                        1 => size / 2,
                        _ => self.offset(size),
                    };
                    Op::Ftruncate { slot, len }
                }
                70..=72 => {
                    let path = self.file_path(k);
                    let size = k.files.iter().find(|f| f.0 == path).map_or(0, |f| f.1);
                    let len = match self.rng.random_range(0..3) {
                        0 => 0,
                        _ => self.offset(size),
                    };
                    Op::Truncate { path, len }
                }
                73..=76 if has_open => Op::Fsync {
                    slot: *pick(&mut self.rng, &k.open),
                },
                77..=79 if has_open => Op::Fstat {
                    slot: *pick(&mut self.rng, &k.open),
                },
                80..=85 => Op::Stat {
                    path: self.any_path(k),
                },
                86..=92 => {
                    let (from, to) = if self.rng.random_bool(0.7) {
                        (self.file_path(k), self.file_path(k))
                    } else {
                        (self.dir_path(k), self.dir_path(k))
                    };
                    let replaces_open = from != to
                        && fs::symlink_metadata(r.full(&from)).is_ok()
                        && k.is_open(r, &to);
                    if replaces_open && !self.replace_open_files {
                        continue;
                    }
                    Op::Rename { from, to }
                }
                93..=97 => {
                    let path = self.file_path(k);
                    if !self.replace_open_files && k.is_open(r, &path) {
                        continue;
                    }
                    Op::Unlink { path }
                }
                98..=101 => Op::Mkdir {
                    path: self.dir_path(k),
                    mode: *pick(&mut self.rng, &[0o755, 0o700, 0o775]),
                },
                102..=104 => Op::Rmdir {
                    path: self.dir_path(k),
                },
                105..=108 => {
                    let path = if self.rng.random_bool(0.85) {
                        pick(&mut self.rng, &k.dirs).clone()
                    } else {
                        self.any_path(k)
                    };
                    Op::Readdir { path }
                }
                109..=114 => Op::ReadWhole {
                    path: self.file_path(k),
                },
                115..=116 => Op::Chmod {
                    path: self.any_path(k),
                    mode: *pick(&mut self.rng, MODES),
                },
                117..=119 if has_open => Op::DropCache {
                    slot: *pick(&mut self.rng, &k.open),
                },
                120..=123 => Op::Link {
                    from: self.file_path(k),
                    to: self.file_path(k),
                },
                _ => continue,
            };
            return op;
        }
    }
}

fn page_bytes(cfg: &Config) -> u64 {
    cachalot::cli::parse_size(&cfg.page_size).unwrap()
}

// ---------------------------------------------------------------------------------------
// Running, replaying, shrinking
// ---------------------------------------------------------------------------------------

struct Failure {
    /// Index of the failing op in the log, or `ops.len()` when the final checks failed.
    at: usize,
    msg: String,
    /// Kind of failure (op and outcome kind): shrinking keeps the kind.
    sig: String,
}

struct Mismatch {
    msg: String,
    sig: String,
}

fn op_kind(op: &Op) -> String {
    format!("{op:?}")
        .split([' ', '{'])
        .next()
        .unwrap_or("")
        .to_string()
}

fn out_kind(o: &Out) -> String {
    match o {
        Out::Err(e) => format!("Err({e})"),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("")
            .to_string(),
    }
}

fn finish_failure(at: usize, msg: String) -> Failure {
    Failure {
        at,
        sig: format!("finish:{}", msg.split(':').next().unwrap_or("")),
        msg,
    }
}

/// Run a generated sequence of `n` operations; returns the log and the first failure.
fn run_generated(cfg: &Config, seed: u64, n: usize) -> (Vec<Op>, Option<Failure>, (usize, usize)) {
    let mut s = Session::new(cfg);
    let mut gen = Gen {
        rng: SmallRng::seed_from_u64(seed),
        page: page_bytes(cfg),
        replace_open_files: cfg.replace_open_files,
    };
    let mut log = Vec::with_capacity(n + n / CHECK_EVERY);
    for i in 0..n {
        // every 4th check happens with nothing open: the backing dir is compared too
        let op = if i > 0 && i % CHECK_EVERY == 0 {
            Op::Check
        } else if i % (4 * CHECK_EVERY) == 4 * CHECK_EVERY - 1 {
            Op::CloseAll
        } else if i % REMOUNT_EVERY == REMOUNT_EVERY - 1 {
            Op::Remount
        } else {
            gen.op(&known(&s.r), &s.r)
        };
        log.push(op.clone());
        if let Err(m) = s.step(&op) {
            return (
                log,
                Some(Failure {
                    at: i,
                    msg: m.msg,
                    sig: m.sig,
                }),
                (s.tolerated, s.avoided),
            );
        }
    }
    let r = s.finish().err().map(|msg| finish_failure(log.len(), msg));
    eprintln!(
        "{} full comparisons with the reference, {} of them with the backing dir too",
        s.checks.0, s.checks.1
    );
    (log, r, (s.tolerated, s.avoided))
}

/// Replay a fixed log on a fresh mount and reference.
fn replay(cfg: &Config, ops: &[Op]) -> Option<Failure> {
    let mut s = Session::new(cfg);
    for (i, op) in ops.iter().enumerate() {
        if let Err(m) = s.step(op) {
            return Some(Failure {
                at: i,
                msg: m.msg,
                sig: m.sig,
            });
        }
    }
    s.finish().err().map(|msg| finish_failure(ops.len(), msg))
}

fn shrink_budget() -> Duration {
    Duration::from_secs(
        std::env::var("CACHALOT_SHRINK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    )
}

/// Drop chunks of operations (halving the chunk size) as long as the sequence still
/// fails the same way (same op kind and outcome kind); each attempt runs on a fresh
/// mount. Returns the shortest failing log found, checked to fail again.
fn shrink(cfg: &Config, ops: Vec<Op>, sig: &str, budget: Duration) -> (Vec<Op>, Option<Failure>) {
    let start = Instant::now();
    let mut cur = ops;
    let same = |f: &Option<Failure>| f.as_ref().is_some_and(|f| f.sig == sig);
    let mut last = replay(cfg, &cur);
    if !same(&last) {
        eprintln!(
            "shrink: the failure did not reproduce on a fresh mount (timing-dependent?): {:?}",
            last.as_ref().map(|f| &f.msg)
        );
        return (cur, None);
    }
    let f = last.as_ref().unwrap();
    cur.truncate((f.at + 1).min(cur.len()));
    let mut chunk = (cur.len() / 2).max(1);
    'outer: loop {
        let mut i = 0;
        let mut progressed = false;
        while i < cur.len() {
            if start.elapsed() > budget {
                eprintln!("shrink: time budget of {budget:?} used up");
                break 'outer;
            }
            let end = (i + chunk).min(cur.len());
            let mut cand: Vec<Op> = cur[..i].to_vec();
            cand.extend_from_slice(&cur[end..]);
            let r = replay(cfg, &cand);
            if same(&r) {
                let f = r.unwrap();
                cand.truncate((f.at + 1).min(cand.len()));
                cur = cand;
                last = Some(f);
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 && !progressed {
            break;
        }
        if !progressed {
            chunk = (chunk / 2).max(1);
        }
    }
    let again = (0..3).filter(|_| same(&replay(cfg, &cur))).count();
    eprintln!("shrink: the shrunk log failed again in {again} of 3 replays");
    (cur, last)
}

fn report_failure(test: &str, cfg: &Config, seed: u64, n: usize, log: Vec<Op>, f: Failure) -> ! {
    let mut text = format!(
        "\n=== fsx model mismatch: seed {seed} ({n} ops), config {cfg:?}\n\
         === reproduce: CACHALOT_SEED={seed} CACHALOT_OPS={n} cargo test --test fuse model_fsx::{test} -- --exact --nocapture\n\
         === at op {}: {}\n=== last operations:\n",
        f.at, f.msg
    );
    let from = f.at.saturating_sub(30);
    for (i, op) in log.iter().enumerate().take(f.at + 1).skip(from) {
        text.push_str(&format!("  {i:6}  {op}\n"));
    }
    eprintln!("{text}");
    let budget = shrink_budget();
    let (small, sf) = if budget.is_zero() {
        (Vec::new(), None)
    } else {
        eprintln!("shrinking (budget {budget:?}; CACHALOT_SHRINK_SECS=0 disables)...");
        shrink(
            cfg,
            log[..(f.at + 1).min(log.len())].to_vec(),
            &f.sig,
            budget,
        )
    };
    if let Some(sf) = sf {
        let file = std::env::temp_dir().join(format!("cachalot-fsx-{seed}.json"));
        let json = serde_json::json!({ "config": cfg, "ops": small });
        let _ = fs::write(&file, serde_json::to_vec_pretty(&json).unwrap());
        text.push_str(&format!(
            "=== shrunk to {} ops (fails with: {}):\n",
            small.len(),
            sf.msg
        ));
        for (i, op) in small.iter().enumerate() {
            text.push_str(&format!("  {i:4}  {op}\n"));
        }
        text.push_str(&format!(
            "=== saved as {}; replay: CACHALOT_FSX_REPLAY={} cargo test --test fuse model_fsx::replay_from_env -- --nocapture\n",
            file.display(),
            file.display()
        ));
    }
    panic!("{text}");
}

fn long() -> bool {
    std::env::var("CACHALOT_LONG").is_ok_and(|v| v == "1")
}

fn ops_per_seed(default: usize) -> usize {
    std::env::var("CACHALOT_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long() { 100_000 } else { default })
}

/// The seed: CACHALOT_SEED if set, else random (always printed). `offset` makes the
/// tests of one run use different seeds (and so different configs).
fn seed_for(test: &str, offset: u64) -> u64 {
    let seed = match std::env::var("CACHALOT_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("CACHALOT_SEED={v:?} is not a number")),
        Err(_) => {
            static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            BASE.get_or_init(|| rand::rng().random::<u64>() / 4 * 4)
                .wrapping_add(offset)
        }
    };
    eprintln!("{test}: CACHALOT_SEED={seed}");
    println!("{test}: CACHALOT_SEED={seed}");
    seed
}

fn run_seed(test: &str, seed_offset: u64, default_ops: usize) {
    require_root_and_fuse();
    let seed = seed_for(test, seed_offset);
    let cfg = Config::for_seed(seed);
    let n = ops_per_seed(default_ops);
    let t = Instant::now();
    let (log, failure, (tolerated, avoided)) = run_generated(&cfg, seed, n);
    if let Some(f) = failure {
        report_failure(test, &cfg, seed, n, log, f);
    }
    eprintln!(
        "{test}: seed {seed}, {n} ops, config {cfg:?}: OK in {:.1?} \
         (known bugs: {tolerated} reads forgiven, {avoided} ops avoided)",
        t.elapsed()
    );
}

// Four seeds per run (the config follows from the seed: pages of 4 KiB, 16 KiB or 1 MiB,
// metadata TTL 1s or 0s). The offsets make the four configs of one run differ.

#[test]
fn fsx_seed_a() {
    run_seed("fsx_seed_a", 0, 3000);
}

#[test]
fn fsx_seed_b() {
    run_seed("fsx_seed_b", 1, 3000);
}

#[test]
fn fsx_seed_c() {
    run_seed("fsx_seed_c", 2, 3000);
}

#[test]
fn fsx_seed_d() {
    run_seed("fsx_seed_d", 3, 3000);
}

/// The same model over the userspace NFS backend (nfs-ganesha exporting a local
/// directory, which is compared with the reference like the local backing dir).
#[test]
fn fsx_nfs() {
    require_root_and_fuse();
    let test = "fsx_nfs";
    let seed = seed_for(test, 4);
    let mut cfg = Config::for_seed(seed);
    cfg.kind = SourceKind::Nfs;
    cfg.metadata_ttl = "0s".into();
    let n = ops_per_seed(1500);
    let t = Instant::now();
    let (log, failure, (tolerated, avoided)) = run_generated(&cfg, seed, n);
    if let Some(f) = failure {
        report_failure(test, &cfg, seed, n, log, f);
    }
    eprintln!(
        "{test}: seed {seed}, {n} ops, config {cfg:?}: OK in {:.1?} \
         (known bugs: {tolerated} reads forgiven, {avoided} ops avoided)",
        t.elapsed()
    );
}

/// Replays a saved (shrunk) log: `CACHALOT_FSX_REPLAY=<json file>`. Does nothing without it.
#[test]
fn replay_from_env() {
    let Ok(file) = std::env::var("CACHALOT_FSX_REPLAY") else {
        return;
    };
    #[derive(Deserialize)]
    struct Saved {
        config: Config,
        ops: Vec<Op>,
    }
    let saved: Saved = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    for (i, op) in saved.ops.iter().enumerate() {
        eprintln!("  {i:4}  {op}");
    }
    if let Some(f) = replay(&saved.config, &saved.ops) {
        panic!("replay of {file} fails at op {}: {}", f.at, f.msg);
    }
}

/// The model itself, without cachalot: two plain directories never disagree (so a
/// mismatch above is never the harness's fault).
#[test]
fn model_is_deterministic_on_plain_directories() {
    let seed = 0xF5C0_FFEE;
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut a = World::new(d1.path());
    let mut r = World::new(d2.path());
    let mut gen = Gen {
        rng: SmallRng::seed_from_u64(seed),
        page: 4096,
        replace_open_files: true,
    };
    for i in 0..2000 {
        let op = gen.op(&known(&r), &r);
        let (oa, or) = (a.apply(&op), r.apply(&op));
        assert_eq!(oa, or, "op {i} `{op}`");
    }
    a.close_all();
    r.close_all();
    compare_trees("dir", d1.path(), d2.path()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Bugs found by the model, each reduced to a deterministic test; all fixed, kept as
// regression tests.
// ---------------------------------------------------------------------------------------

mod found {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    /// Drop the kernel's cached pages of `f` (what memory pressure does at any time), so
    /// the next read reaches the daemon.
    fn drop_pages(f: &File) {
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    fn read_at_most(f: &File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn descriptor_reads_back_its_own_fsynced_write() {
        let m = Mount::with_prepare(&["--page-size", "4KiB"], |b| {
            fs::write(b.join("f"), vec![b'a'; 10_000]).unwrap()
        });
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.m("f"))
            .unwrap();
        assert_eq!(read_at_most(&f, 0, 10_000).unwrap(), vec![b'a'; 10_000]);
        f.write_all_at(&vec![b'c'; 10_000], 0).unwrap();
        f.sync_all().unwrap();
        assert_eq!(
            fs::read(m.b("f")).unwrap(),
            vec![b'c'; 10_000],
            "fsync published"
        );
        drop_pages(&f);
        let got = read_at_most(&f, 0, 10_000).unwrap();
        assert!(
            got == vec![b'c'; 10_000],
            "the descriptor reads its pre-write content after its own fsync: {:?}...",
            String::from_utf8_lossy(&got[..8])
        );
    }

    #[test]
    fn descriptor_sees_data_published_by_another_descriptor() {
        let m = Mount::with_prepare(&["--page-size", "4KiB"], |b| {
            fs::write(b.join("log"), vec![b'1'; 5000]).unwrap()
        });
        let reader = File::open(m.m("log")).unwrap();
        assert_eq!(read_at_most(&reader, 0, 20_000).unwrap().len(), 5000);
        let mut w = OpenOptions::new().append(true).open(m.m("log")).unwrap();
        w.write_all(&vec![b'2'; 5000]).unwrap();
        close_checked(w).unwrap();
        // the reader's kernel attributes expire; a tail -f reads on from its offset
        std::thread::sleep(Duration::from_millis(1200));
        let tail = read_at_most(&reader, 5000, 20_000).unwrap();
        assert_eq!(
            tail.len(),
            5000,
            "a reader that was open during another descriptor's append+close does not see \
             the appended bytes"
        );
        drop_pages(&reader);
        let all = read_at_most(&reader, 0, 20_000).unwrap();
        assert_eq!(all.len(), 10_000, "after a page-cache drop: stale version");
    }

    #[test]
    fn append_after_a_stale_read_keeps_every_acknowledged_append() {
        let m = Mount::with_prepare(&["--page-size", "4KiB"], |b| {
            fs::write(b.join("log"), vec![b'1'; 5000]).unwrap()
        });
        let reader = File::open(m.m("log")).unwrap();
        read_at_most(&reader, 0, 20_000).unwrap();
        for (i, byte) in [b'2', b'3'].into_iter().enumerate() {
            let mut w = OpenOptions::new().append(true).open(m.m("log")).unwrap();
            w.write_all(&vec![byte; 5000]).unwrap();
            close_checked(w).unwrap(); // acknowledged
            if i == 0 {
                // memory pressure evicts the reader's pages; it reads again
                drop_pages(&reader);
                read_at_most(&reader, 0, 20_000).unwrap();
            }
        }
        drop(reader);
        let data = fs::read(m.b("log")).unwrap();
        let count = |b: u8| data.iter().filter(|&&x| x == b).count();
        assert_eq!(
            (data.len(), count(b'1'), count(b'2'), count(b'3')),
            (15_000, 5000, 5000, 5000),
            "(length, 1s, 2s, 3s): the second append overwrote the first one"
        );
    }

    #[test]
    fn unlinked_open_file_stays_readable_and_writable() {
        let m = Mount::with_prepare(&[], |b| fs::write(b.join("f"), b"hello world").unwrap());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.m("f"))
            .unwrap();
        let ro = File::open(m.m("f")).unwrap();
        fs::remove_file(m.m("f")).unwrap();
        f.write_all_at(b"HELLO", 0)
            .expect("write to an unlinked open file");
        drop_pages(&f);
        assert_eq!(read_at_most(&f, 0, 100).unwrap(), b"HELLO world");
        drop_pages(&ro);
        let r = read_at_most(&ro, 0, 100).expect("read from an unlinked open file");
        assert!(r == b"hello world" || r == b"HELLO world", "{r:?}");
        close_checked(f).unwrap();
        assert!(!m.b("f").exists(), "unlinked file resurrected");
    }

    #[test]
    fn removed_open_directory_can_still_be_fstated() {
        let m = Mount::new();
        fs::create_dir(m.m("d")).unwrap();
        let d = File::open(m.m("d")).unwrap();
        fs::remove_dir(m.m("d")).unwrap();
        let md = d.metadata().expect("fstat of the removed directory");
        assert!(md.is_dir());
    }

    #[test]
    fn renamed_open_file_is_still_read_through_its_descriptor() {
        let m = Mount::with_prepare(&[], |b| fs::write(b.join("f1"), b"first file").unwrap());
        let a = File::open(m.m("f1")).unwrap();
        fs::rename(m.m("f1"), m.m("f2")).unwrap();
        fs::write(m.m("f1"), b"OTHER FILE").unwrap();
        assert_eq!(
            read_at_most(&a, 0, 100).unwrap(),
            b"first file",
            "the descriptor of the renamed file read the new f1"
        );
        let b = File::open(m.m("f2")).unwrap();
        fs::create_dir(m.m("d")).unwrap();
        fs::rename(m.m("f2"), m.m("d/f3")).unwrap();
        drop_pages(&b);
        assert_eq!(
            read_at_most(&b, 0, 100).unwrap(),
            b"first file",
            "after a move"
        );
    }

    #[test]
    fn rename_of_a_new_file_over_an_existing_one_replaces_it() {
        let m = Mount::with_prepare(&[], |b| {
            fs::write(b.join("old"), b"old content").unwrap();
            fs::write(b.join("old2"), b"old2 content").unwrap();
        });
        let mut f = File::create(m.m("new")).unwrap();
        f.write_all(b"new content").unwrap();
        fs::rename(m.m("new"), m.m("old")).unwrap();
        fs::rename(m.m("old"), m.m("final")).unwrap();
        let mut g = File::create(m.m("new2")).unwrap();
        g.write_all(b"new2").unwrap();
        fs::rename(m.m("new2"), m.m("old2")).unwrap();
        fs::remove_file(m.m("old2")).unwrap();
        close_checked(f).unwrap();
        close_checked(g).unwrap();
        let listing: BTreeSet<String> = fs::read_dir(m.mnt())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listing,
            BTreeSet::from(["final".to_string()]),
            "replaced/unlinked names came back"
        );
        assert_eq!(fs::read(m.b("final")).unwrap(), b"new content");
        assert!(!m.b("old").exists() && !m.b("old2").exists());
    }

    #[test]
    fn rmdir_after_unlinking_a_file_open_for_writing() {
        let m = Mount::with_prepare(&[], |b| {
            fs::create_dir(b.join("d")).unwrap();
            fs::write(b.join("d/f"), b"x").unwrap();
        });
        let f = OpenOptions::new().write(true).open(m.m("d/f")).unwrap();
        f.write_all_at(b"y", 0).unwrap();
        fs::remove_file(m.m("d/f")).unwrap();
        let r = fs::remove_dir(m.m("d"));
        drop(f);
        r.expect("rmdir of a directory whose only file was unlinked");
    }

    #[test]
    fn rdonly_trunc_open_truncates_like_linux() {
        let m = Mount::with_prepare(&[], |b| fs::write(b.join("f"), b"xyz").unwrap());
        let f = open_raw(&m.m("f"), libc::O_RDONLY | libc::O_TRUNC, 0).unwrap();
        drop(f);
        assert_eq!(fs::metadata(m.m("f")).unwrap().len(), 0);
        assert_eq!(fs::read(m.b("f")).unwrap(), b"");
    }

    #[test]
    fn nfs_chmod_of_an_open_file_keeps_its_readers_working() {
        let server = support_nfs::ganesha();
        let (_dir, url) = server.area(&format!("chmod-{}", std::process::id()));
        let m = support_nfs::mount::mount(&url, &["--page-size", "4KiB"]).unwrap();
        fs::write(m.path("f"), vec![7u8; 100_000]).unwrap();
        let reader = File::open(m.path("f")).unwrap();
        read_at_most(&reader, 0, 4096).unwrap();
        fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
        let r = read_at_most(&reader, 50_000, 4096);
        assert_eq!(
            r.map(|v| (v.len(), v.iter().all(|&b| b == 7)))
                .map_err(|e| e.raw_os_error()),
            Ok((4096, true)),
            "reading on after a chmod of the file (length, content right)"
        );
    }

    /// The model with none of the allowances above.
    #[test]
    fn fsx_strict_open_file_semantics() {
        require_root_and_fuse();
        let seed = seed_for("fsx_strict_open_file_semantics", 7);
        let mut cfg = Config::for_seed(seed);
        cfg.tolerate_known_bugs = false;
        cfg.replace_open_files = true;
        let n = ops_per_seed(3000);
        let (log, failure, _) = run_generated(&cfg, seed, n);
        if let Some(f) = failure {
            report_failure(
                "found::fsx_strict_open_file_semantics",
                &cfg,
                seed,
                n,
                log,
                f,
            );
        }
    }
}
