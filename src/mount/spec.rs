//! What a FUSE session is started with: the source, the staging path and
//! the cache knobs of one volume, without secrets. The CSI node records it
//! per staged volume; the mounter and `cachalot mount` children are started
//! from it, through the same `cachalot mount` arguments (one parser, one set
//! of checks).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::s3::{Credentials, WebIdentity};
use crate::backend::{Identity, Source};
use crate::csi::params::CacheKnobs;

use super::MountOptions;

/// Everything a mount child is started with, except secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub staging: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: Option<u64>,
    pub page_size: Option<u64>,
    pub metadata_ttl_ms: Option<u64>,
    pub read_only: bool,
    /// `--passthrough-read-write`; absent in records written before it.
    #[serde(default)]
    pub passthrough_read_write: bool,
    pub owner: Option<(u32, u32)>,
    pub mount_group: Option<u32>,
    /// S3 endpoint (`--endpoint`, with `--path-style`) and region; absent
    /// in records written before S3 volumes existed.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default)]
    pub s3_region: Option<String>,
    /// Globs of the files to warm up in the background once mounted.
    #[serde(default)]
    pub warm: Vec<String>,
    /// The volume's byte quota.
    #[serde(default)]
    pub capacity: Option<u64>,
    /// S3 keys from STS for this web identity (`authenticationSource:
    /// pod`: the pod's service-account token), not the process's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity: Option<WebIdentity>,
}

impl MountSpec {
    /// The spec of a session serving `source` (its URL, and for S3 its
    /// endpoint and region, which a URL does not carry).
    pub fn new(
        source: &Source,
        staging: PathBuf,
        cache_dir: PathBuf,
        cache: &CacheKnobs,
        read_only: bool,
        owner: Option<Identity>,
        mount_group: Option<u32>,
    ) -> MountSpec {
        let (s3_endpoint, s3_region) = match source {
            Source::S3 {
                endpoint, region, ..
            } => (endpoint.clone(), region.clone()),
            _ => (None, None),
        };
        MountSpec {
            source: source.to_string(),
            staging,
            cache_dir,
            cache_size: cache.cache_size,
            page_size: cache.page_size,
            metadata_ttl_ms: cache.metadata_ttl.map(|d| d.as_millis() as u64),
            read_only: read_only || cache.read_only,
            passthrough_read_write: cache.passthrough_read_write,
            owner: owner.map(|i| (i.uid, i.gid)),
            mount_group,
            s3_endpoint,
            s3_region,
            warm: cache.warm.clone(),
            capacity: cache.capacity,
            web_identity: None,
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "mount".to_string(),
            self.source.clone(),
            self.staging.display().to_string(),
            "--foreground".into(),
            "--allow-other".into(),
            "--cache-dir".into(),
            self.cache_dir.display().to_string(),
        ];
        if let Some(v) = self.cache_size {
            a.extend(["--cache-size".into(), v.to_string()]);
        }
        if let Some(v) = self.page_size {
            a.extend(["--page-size".into(), v.to_string()]);
        }
        if let Some(v) = self.metadata_ttl_ms {
            a.extend(["--metadata-ttl".into(), format!("{v}ms")]);
        }
        if self.read_only {
            a.push("--read-only".into());
        }
        if self.passthrough_read_write {
            a.push("--passthrough-read-write".into());
        }
        if let Some((u, g)) = self.owner {
            a.extend(["--uid".into(), u.to_string(), "--gid".into(), g.to_string()]);
        }
        if let Some(g) = self.mount_group {
            a.extend(["--mount-group".into(), g.to_string()]);
        }
        if let Some(e) = &self.s3_endpoint {
            // S3-compatible servers on a custom endpoint expect path style.
            a.extend(["--endpoint".into(), e.clone(), "--path-style".into()]);
        }
        if let Some(r) = &self.s3_region {
            a.extend(["--region".into(), r.clone()]);
        }
        if let Some(v) = self.capacity {
            a.extend(["--capacity".into(), v.to_string()]);
        }
        if let Some(w) = &self.web_identity {
            a.push("--web-identity-token-file".into());
            a.push(w.token_file.display().to_string());
            a.extend(["--role-arn".into(), w.role_arn.clone()]);
            if let Some(name) = &w.session_name {
                a.extend(["--role-session-name".into(), name.clone()]);
            }
        }
        for glob in &self.warm {
            // `=`: a glob may start with a dash.
            a.push(format!("--warm={glob}"));
        }
        a
    }
}

impl MountSpec {
    /// The options of the session this spec describes, checked exactly as
    /// `cachalot mount` checks its arguments. `credentials`: the volume's
    /// S3 secret (nothing else is looked at then).
    pub fn options(&self, credentials: Option<Credentials>) -> Result<MountOptions, String> {
        use clap::Parser;
        let mut args = self.args();
        // The staging path is checked by whoever mounts there, not here: a
        // stat of a session that is being taken over would wait for the
        // session itself (nobody answers it yet).
        if let Some(mountpoint) = args.get_mut(2) {
            *mountpoint = "/".into();
        }
        let argv = std::iter::once("cachalot".to_string()).chain(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let crate::cli::Command::Mount(args) = cli.command else {
            return Err("a mount spec must describe a mount".into());
        };
        let source = args.source()?;
        args.validate(&source)?;
        let mut opts = args.options(source);
        opts.mountpoint = self.staging.clone();
        opts.s3.credentials.explicit = credentials;
        opts.keepable = true;
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_endpoint_and_region_become_mount_args() {
        let source = Source::parse("s3://bkt/p")
            .unwrap()
            .with_s3_site(Some("http://127.0.0.1:9000".into()), Some("eu-1".into()));
        let spec = MountSpec::new(
            &source,
            "/st".into(),
            "/c".into(),
            &CacheKnobs::default(),
            false,
            None,
            None,
        );
        let args = spec.args().join(" ");
        assert!(
            args.contains("--endpoint http://127.0.0.1:9000 --path-style --region eu-1"),
            "{args}"
        );
        // Records written before these fields existed still load.
        let old = r#"{"source":"file:///x","staging":"/s","cache_dir":"/c","cache_size":null,
            "page_size":null,"metadata_ttl_ms":null,"read_only":false,"owner":null,"mount_group":null}"#;
        let spec: MountSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.s3_endpoint, None);
        assert!(spec.warm.is_empty());
    }

    #[test]
    fn warm_globs_reach_the_mount_options() {
        let opts = options_with(CacheKnobs {
            warm: vec!["*.bin".into(), "-odd/**".into()],
            ..CacheKnobs::default()
        });
        let globs: Vec<&str> = opts.warm.iter().map(|g| g.as_str()).collect();
        assert_eq!(globs, ["*.bin", "-odd/**"]);
    }

    #[test]
    fn passthrough_read_write_reaches_the_mount_options() {
        let spec = |passthrough_read_write| {
            options_with(CacheKnobs {
                passthrough_read_write,
                ..CacheKnobs::default()
            })
        };
        let on = spec(true);
        assert!(on.passthrough && on.passthrough_read_write && !on.read_only);
        assert!(!spec(false).passthrough_read_write);
    }

    /// The mount options of a read-write file:// volume with `knobs`.
    fn options_with(knobs: CacheKnobs) -> MountOptions {
        let spec = MountSpec::new(
            &Source::parse("file:///tmp").unwrap(),
            "/st".into(),
            "/c".into(),
            &knobs,
            false,
            None,
            None,
        );
        spec.options(None).unwrap()
    }
}
