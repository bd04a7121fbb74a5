//! NFS attributes to our metadata, and our attribute changes to NFS `sattr3`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nfs3_types::nfs3::{fattr3, ftype3, nfstime3, sattr3, set_atime, set_mtime, Nfs3Option};

use crate::backend::{AttrChanges, FileKind, Metadata, VersionToken};

pub fn kind_of(t: ftype3) -> FileKind {
    match t {
        ftype3::NF3REG => FileKind::File,
        ftype3::NF3DIR => FileKind::Directory,
        ftype3::NF3LNK => FileKind::Symlink,
        ftype3::NF3FIFO => FileKind::Fifo,
        ftype3::NF3CHR => FileKind::CharDevice,
        ftype3::NF3BLK => FileKind::BlockDevice,
        ftype3::NF3SOCK => FileKind::Socket,
    }
}

fn time(t: &nfstime3) -> SystemTime {
    UNIX_EPOCH + Duration::new(u64::from(t.seconds), t.nseconds.min(999_999_999))
}

pub fn nfstime(t: SystemTime) -> nfstime3 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    nfstime3 {
        seconds: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        nseconds: d.subsec_nanos(),
    }
}

/// fileid + size + mtime: a content change through any client moves the mtime
/// or the size, and a replace-by-rename changes the fileid. The ctime is left
/// out on purpose: a chmod/chown (or a link count change) moves only the ctime,
/// and must neither make open readers fail with ESTALE nor invalidate cached
/// pages, since the content is the same.
pub fn version(a: &fattr3) -> VersionToken {
    VersionToken(format!(
        "{:x}-{:x}-{:x}.{:x}",
        a.fileid, a.size, a.mtime.seconds, a.mtime.nseconds
    ))
}

pub fn metadata(a: &fattr3) -> Metadata {
    Metadata {
        kind: kind_of(a.type_),
        size: a.size,
        mode: a.mode & 0o7777,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        atime: time(&a.atime),
        mtime: time(&a.mtime),
        ctime: time(&a.ctime),
        version: version(a),
        object_id: Some(a.fileid),
        rdev: match a.type_ {
            ftype3::NF3CHR | ftype3::NF3BLK => libc::makedev(a.rdev.specdata1, a.rdev.specdata2),
            _ => 0,
        },
    }
}

pub fn mode_only(mode: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(mode & 0o7777),
        ..sattr3::default()
    }
}

pub fn size_only(size: u64) -> sattr3 {
    sattr3 {
        size: Nfs3Option::Some(size),
        ..sattr3::default()
    }
}

/// `changes` as sattr3. Symlinks have no mode of their own on Linux, so a
/// mode change on one is dropped (as chmod would follow the link).
pub fn sattr(changes: &AttrChanges, is_symlink: bool) -> sattr3 {
    sattr3 {
        mode: match (changes.mode, is_symlink) {
            (Some(m), false) => Nfs3Option::Some(m & 0o7777),
            _ => Nfs3Option::None,
        },
        uid: changes.uid.map_or(Nfs3Option::None, Nfs3Option::Some),
        gid: changes.gid.map_or(Nfs3Option::None, Nfs3Option::Some),
        size: Nfs3Option::None,
        atime: match (changes.atime, changes.atime_now) {
            (Some(_), true) => set_atime::SET_TO_SERVER_TIME,
            (Some(t), false) => set_atime::SET_TO_CLIENT_TIME(nfstime(t)),
            (None, _) => set_atime::DONT_CHANGE,
        },
        mtime: match (changes.mtime, changes.mtime_now) {
            (Some(_), true) => set_mtime::SET_TO_SERVER_TIME,
            (Some(t), false) => set_mtime::SET_TO_CLIENT_TIME(nfstime(t)),
            (None, _) => set_mtime::DONT_CHANGE,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_nfsv3_seconds_are_clamped() {
        let before_1970 = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(nfstime(before_1970).seconds, 0);
        let after_2106 = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) + 10);
        assert_eq!(nfstime(after_2106).seconds, u32::MAX);
        let fine = UNIX_EPOCH + Duration::new(1_500_000_000, 7);
        assert_eq!(
            (nfstime(fine).seconds, nfstime(fine).nseconds),
            (1_500_000_000, 7)
        );
    }

    fn attrs() -> fattr3 {
        fattr3 {
            type_: ftype3::NF3REG,
            mode: 0o100644,
            nlink: 1,
            uid: 5,
            gid: 6,
            size: 10,
            used: 4096,
            rdev: Default::default(),
            fsid: 1,
            fileid: 42,
            atime: nfstime3 {
                seconds: 1,
                nseconds: 0,
            },
            mtime: nfstime3 {
                seconds: 2,
                nseconds: 3,
            },
            ctime: nfstime3 {
                seconds: 4,
                nseconds: 5,
            },
        }
    }

    #[test]
    fn version_moves_with_content_and_identity() {
        let a = attrs();
        let base = version(&a);
        let mut b = attrs();
        b.atime.seconds = 99;
        assert_eq!(version(&b), base, "atime alone is not a change");
        for change in [
            |x: &mut fattr3| x.size += 1,
            |x: &mut fattr3| x.mtime.nseconds += 1,
            |x: &mut fattr3| x.mtime.seconds += 1,
            |x: &mut fattr3| x.fileid += 1,
        ] {
            let mut c = attrs();
            change(&mut c);
            assert_ne!(version(&c), base);
        }
        assert_eq!(metadata(&a).mode, 0o644);
    }

    #[test]
    fn attribute_only_changes_keep_the_version() {
        // chmod / chown / link count: only the ctime moves, the content is the same
        let base = version(&attrs());
        for change in [
            |x: &mut fattr3| x.ctime.seconds += 1,
            |x: &mut fattr3| x.ctime.nseconds += 1,
            |x: &mut fattr3| x.mode = 0o100600,
            |x: &mut fattr3| x.uid += 1,
            |x: &mut fattr3| x.gid += 1,
            |x: &mut fattr3| x.nlink += 1,
        ] {
            let mut c = attrs();
            change(&mut c);
            assert_eq!(version(&c), base);
        }
    }
}
