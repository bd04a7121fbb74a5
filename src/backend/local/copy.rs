//! Copying a file within the volume's filesystem without its data passing
//! through this process (snapshots, restores and clones: `csi/copy.rs`).
//! The copy shares the source's extents where the filesystem can (FICLONE:
//! XFS, btrfs), else the kernel copies the data (copy_file_range, which a
//! kernel NFS v4.2 mount turns into a server-side copy); it is written to a
//! temp file and published by rename like any write.

use super::*;

/// Make `dst` a copy of `src`'s data: shared extents if the filesystem
/// can, else copied in the kernel.
fn clone_or_copy(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: two valid descriptors; FICLONE takes the source's as its
    // argument.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not this filesystem's (ext4, tmpfs), or across filesystems.
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => {}
        _ => return Err(e),
    }
    // std copies file to file with copy_file_range (falling back to
    // sendfile, then read/write, where the kernel refuses it).
    std::io::copy(&mut &*src, &mut &*dst)?;
    Ok(())
}

impl LocalBackend {
    /// See `Backend::copy_file`; always copies (`Ok(true)`).
    pub(super) async fn copy_within(
        &self,
        id: Identity,
        from: &BackendPath,
        to: &BackendPath,
    ) -> BackendResult<bool> {
        let temp_name = self.shared.next_temp_name(to.name());
        let (f, t, temp) = (from.clone(), to.clone(), temp_name.clone());
        let (source, file) = self
            .shared
            .run(
                id,
                "copy file (open source, create temp file)",
                from,
                move |s| {
                    let source = File::from(s.locate(&f)?.open(libc::O_RDONLY, 0)?);
                    let mode = sys_fstat(source.as_raw_fd())?.st_mode;
                    let (file, _) =
                        create_temp(s, &t, &temp, WriteStart::Empty, mode & 0o7777, id)?;
                    Ok((source, file))
                },
            )
            .await?;
        let file = Arc::new(file);
        let (src, dst) = (Arc::new(source), Arc::clone(&file));
        let copied = self
            .shared
            .run(id, "copy file (clone or copy data)", from, move |_| {
                clone_or_copy(&src, &dst)?;
                dst.metadata().map(|m| m.len())
            })
            .await;
        let writer = LocalPendingWrite::new_shared(
            file,
            temp_name,
            *copied.as_ref().unwrap_or(&0),
            Arc::clone(&self.shared),
            id,
        );
        if let Err(e) = copied {
            writer.abort(to).await;
            return Err(e);
        }
        writer.publish(to).await?;
        Ok(true)
    }
}
