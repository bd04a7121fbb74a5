//! Publishing by writing into the file itself instead of renaming a new
//! one over it: for a file with several hard links, and for a writer who
//! cannot give the replacement the file's owner (see `publish`).

use super::*;

impl NfsPendingWrite {
    /// Publish by copying the temp file's data into the file at `target`
    /// and removing the temp file (see `PendingWrite::publish_in_place`).
    /// The caller holds the state lock.
    pub(super) async fn copy_into(
        &self,
        target: &BackendPath,
        mode: u32,
    ) -> BackendResult<Metadata> {
        let ctx = self
            .vol
            .ctx("publish in place (copy into the file)", target, self.id);
        let (out, before) = self.vol.lookup(&ctx, target).await?;
        let size = self.size();
        let mut offset = 0;
        while offset < size {
            let want = (size - offset).min(COPY_CHUNK as u64) as usize;
            let data = self.read_locked(offset, want).await?;
            if data.is_empty() {
                break;
            }
            write_stable(&self.vol, &ctx, &out, offset, &data).await?;
            offset += data.len() as u64;
        }
        setattr(&self.vol, &ctx, &out, attrs::size_only(offset)).await?;
        self.drop_privileges(&out, before.mode & 0o7777, mode, target)
            .await;
        let dir = self.vol.dir_fh(&ctx, &target.parent()).await?;
        remove_name(&self.vol, &ctx, &dir, &self.temp_name).await?;
        self.finished.store(true, Ordering::Release);
        let a = self.vol.getattr(&ctx, &out).await?;
        Ok(attrs::metadata(&a))
    }

    /// After an in-place write, give the file the mode the session wants
    /// when that only drops setuid/setgid (see `CachalotFs::write_session`).
    /// A server may leave them to the client; a user other than the owner
    /// may not chmod, so the drop is asked as root (it only ever removes
    /// privileges, as the kernel does on the writer's behalf). A squashed
    /// root cannot: logged, the data is in.
    pub(super) async fn drop_privileges(
        &self,
        file: &nfs_fh3,
        has: u32,
        wants: u32,
        target: &BackendPath,
    ) {
        let dropped = has & !wants;
        if dropped == 0 || has & !dropped != wants || dropped & !0o6000 != 0 {
            return;
        }
        let change = attrs::mode_only(wants);
        let as_writer = self.vol.ctx("drop setuid/setgid", target, self.id);
        if setattr(&self.vol, &as_writer, file, change.clone())
            .await
            .is_ok()
        {
            return;
        }
        let root = Identity::new(0, 0);
        let as_root = self.vol.ctx("drop setuid/setgid", target, root);
        if let Err(e) = setattr(&self.vol, &as_root, file, change).await {
            tracing::warn!(error = %e, "could not drop setuid/setgid after a write by another user");
        }
    }
}
