//! Options of s3:// sources (`cachalot mount`, `cachalot doctor`).

use std::path::PathBuf;

use clap::Args;

use super::parse_size;
use crate::backend::s3::{CredentialSource, S3Options, WebIdentity};

/// Options of s3:// sources; refused (exit 2) with any other source.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "S3 options (s3:// sources only)")]
pub struct S3Args {
    /// URL of an S3-compatible server, e.g. http://127.0.0.1:8333 (default: AWS).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub endpoint: Option<String>,
    /// Signing region (default: $AWS_REGION, $AWS_DEFAULT_REGION or us-east-1).
    #[arg(long, value_parser = crate::backend::s3::parse_region)]
    pub region: Option<String>,
    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT.
    #[arg(long)]
    pub path_style: bool,
    /// AWS shared-credentials file (INI) instead of the AWS_* environment variables.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Profile in the credentials file (default: "default").
    #[arg(long)]
    pub profile: Option<String>,
    /// Take keys from STS for --role-arn with the web identity token in
    /// this file (re-read at every exchange), instead of the environment's
    /// credentials. The CSI node uses it for `authenticationSource: pod`.
    #[arg(long, value_name = "FILE", requires = "role_arn")]
    pub web_identity_token_file: Option<PathBuf>,
    /// Role assumed with --web-identity-token-file.
    #[arg(long, value_name = "ARN", requires = "web_identity_token_file", value_parser = parse_role_arn)]
    pub role_arn: Option<String>,
    /// Session name of the role assumed with --web-identity-token-file.
    #[arg(long, value_name = "NAME", requires = "web_identity_token_file")]
    pub role_session_name: Option<String>,
    /// Mode of every file (S3 stores none), octal; default 0644.
    #[arg(long, value_parser = parse_mode, value_name = "OCTAL")]
    pub file_mode: Option<u32>,
    /// Mode of every directory, octal; default 0755.
    #[arg(long, value_parser = parse_mode, value_name = "OCTAL")]
    pub dir_mode: Option<u32>,
    /// Most objects a directory rename copies; beyond it fails with EXDEV. Default 10000.
    #[arg(long, value_name = "N")]
    pub rename_dir_max_objects: Option<usize>,
    /// Part size of multipart uploads (at least 5MiB); default 16MiB.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub part_size: Option<u64>,
}

impl S3Args {
    pub(super) fn given(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut flag = |set: bool, name: &'static str| {
            if set {
                out.push(name);
            }
        };
        flag(self.endpoint.is_some(), "--endpoint");
        flag(self.region.is_some(), "--region");
        flag(self.path_style, "--path-style");
        flag(self.credentials_file.is_some(), "--credentials-file");
        flag(self.profile.is_some(), "--profile");
        flag(
            self.web_identity_token_file.is_some(),
            "--web-identity-token-file",
        );
        flag(self.file_mode.is_some(), "--file-mode");
        flag(self.dir_mode.is_some(), "--dir-mode");
        flag(
            self.rename_dir_max_objects.is_some(),
            "--rename-dir-max-objects",
        );
        flag(self.part_size.is_some(), "--part-size");
        out
    }

    pub fn to_options(&self) -> S3Options {
        let d = S3Options::default();
        S3Options {
            path_style: self.path_style,
            credentials: CredentialSource {
                file: self.credentials_file.clone(),
                profile: self.profile.clone(),
                explicit: None,
                web_identity: self.web_identity(),
            },
            file_mode: self.file_mode.unwrap_or(d.file_mode),
            dir_mode: self.dir_mode.unwrap_or(d.dir_mode),
            rename_dir_max_objects: self
                .rename_dir_max_objects
                .unwrap_or(d.rename_dir_max_objects),
            part_size: self.part_size.unwrap_or(d.part_size),
            ..d
        }
    }

    fn web_identity(&self) -> Option<WebIdentity> {
        Some(WebIdentity {
            token_file: self.web_identity_token_file.clone()?,
            role_arn: self.role_arn.clone()?,
            session_name: self.role_session_name.clone(),
        })
    }
}

/// `644`, `0644`, `0o644`: permission bits in octal.
pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!(
            "invalid mode '{text}': use octal permission bits such as 0644"
        )),
    }
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    crate::backend::s3::parse_endpoint(text).map_err(|e| e.to_string())
}

/// An IAM role ARN (`arn:PARTITION:iam::ACCOUNT:role/NAME`), checked for
/// its form only: STS decides whether it exists.
pub(crate) fn parse_role_arn(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty());
    match ok {
        true => Ok(text.to_string()),
        false => Err(format!(
            "invalid role ARN '{text}': expected arn:aws:iam::123456789012:role/NAME"
        )),
    }
}
