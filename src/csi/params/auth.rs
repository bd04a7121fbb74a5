//! `authenticationSource`: whose identity signs a volume's S3 requests.
//!
//! - `driver` (the default): the volume's node-stage secret, else the
//!   cloud identity of the node plugin (IRSA, pod identity, instance
//!   profile). One FUSE session per volume per node serves every pod.
//! - `pod`: each pod's own service-account token (the CSIDriver's
//!   `tokenRequests`), exchanged at STS for `roleArn`. The role's trust
//!   policy decides which service accounts may assume it; one FUSE session
//!   per volume, node and service account, so pods of one service account
//!   share it and no pod reads through another's identity.

use super::*;

/// The audience Kubernetes puts in the token when the CSIDriver asks for
/// it (`tokenRequests`), and STS expects for IRSA.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Authentication {
    #[default]
    Driver,
    Pod(PodAuthentication),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAuthentication {
    /// The role every pod's token is exchanged for.
    pub role_arn: String,
    /// The audience of the token to use (a key of the tokens kubelet
    /// passes).
    pub audience: String,
}

impl Authentication {
    /// From the `authenticationSource`, `roleArn` and `tokenAudience`
    /// parameters (StorageClass or volume context).
    pub(super) fn parse(
        source: Option<&str>,
        role_arn: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Authentication, InvalidArgument> {
        let pod = match source.map(str::to_ascii_lowercase).as_deref() {
            None | Some("driver") => false,
            Some("pod") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "parameter authenticationSource: '{other}' is not one of driver, pod"
                )))
            }
        };
        if !pod {
            if let Some(key) = [("roleArn", role_arn), ("tokenAudience", audience)]
                .iter()
                .find_map(|(k, v)| v.map(|_| *k))
            {
                return Err(invalid(format!(
                    "parameter {key} applies only with authenticationSource: pod"
                )));
            }
            return Ok(Authentication::Driver);
        }
        let role_arn = role_arn.ok_or_else(|| {
            invalid(
                "authenticationSource: pod needs roleArn: the IAM role each pod's service-account \
                 token is exchanged for (its trust policy names the service accounts allowed)",
            )
        })?;
        let role_arn = crate::cli::parse_role_arn(role_arn)
            .map_err(|e| invalid(format!("parameter roleArn: {e}")))?;
        let audience = match audience {
            None => DEFAULT_TOKEN_AUDIENCE.to_string(),
            Some("") => return Err(invalid("parameter tokenAudience: empty")),
            Some(a) => a.to_string(),
        };
        Ok(Authentication::Pod(PodAuthentication {
            role_arn,
            audience,
        }))
    }

    /// Pods sign their own requests only where there are requests to sign.
    pub fn check_location(&self, location: &Source) -> Result<(), InvalidArgument> {
        match (self, location.is_s3()) {
            (Authentication::Pod(_), false) => Err(invalid(
                "authenticationSource: pod applies to S3 volumes only; NFS and local volumes are \
                 served with the identity of the uid/gid parameters",
            )),
            _ => Ok(()),
        }
    }

    /// The canonical volume-context form, parsed back by [`NodeParams`].
    pub(super) fn write_context(&self, ctx: &mut BTreeMap<String, String>) {
        if let Authentication::Pod(p) = self {
            ctx.insert("authenticationSource".into(), "pod".into());
            ctx.insert("roleArn".into(), p.role_arn.clone());
            ctx.insert("tokenAudience".into(), p.audience.clone());
        }
    }

    pub fn pod(&self) -> Option<&PodAuthentication> {
        match self {
            Authentication::Pod(p) => Some(p),
            Authentication::Driver => None,
        }
    }
}
