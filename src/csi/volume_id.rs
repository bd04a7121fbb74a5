//! Volume IDs: everything NodeStage and DeleteVolume need (backend kind,
//! location, sub-path, delete policy), in one escaped string.
//!
//! ```text
//! v1#file#<root>#<sub>#<onDelete>
//! v1#nfs#<server>#<port or empty>#<export>#<sub>#<onDelete>
//! v1#s3#<bucket>#<prefix>#<endpoint>#<region>#<sub>#<onDelete>
//! ```
//!
//! Each field is percent-encoded (`%`, `#`, controls, space and non-ASCII;
//! `/` stays literal). Decoding accepts only the canonical encoding, so an
//! escaped slash (`%2F`) or dot cannot smuggle a component past validation,
//! and the decoded sub-path is validated like a subDir: relative, no `.`,
//! `..` or empty components. An empty sub-path (static volume = the whole
//! source) is allowed; DeleteVolume never removes a source root.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use super::params::{parse_abs_path, parse_sub_path, InvalidArgument, OnDelete};
use crate::backend::source::{bucket_name_ok, nfs_host};
use crate::backend::{BackendPath, Source};

const PREFIX: &str = "v1#";
const FIELD: &AsciiSet = &CONTROLS.add(b'%').add(b'#').add(b' ');

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId {
    /// Where the volume's parent directory lives (for a static volume, the
    /// volume itself).
    pub location: Source,
    /// The volume's directory below the location; root for a static volume
    /// that is the whole source.
    pub sub: BackendPath,
    pub on_delete: OnDelete,
}

/// Why a string is not a volume ID of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeIdError {
    /// Not issued by this driver (no `v1#` prefix): an unknown volume.
    Foreign,
    /// Ours, but malformed or trying to leave its source.
    Invalid(String),
}

impl fmt::Display for VolumeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeIdError::Foreign => f.write_str("volume id was not issued by this driver"),
            VolumeIdError::Invalid(why) => write!(f, "invalid volume id: {why}"),
        }
    }
}

impl From<VolumeIdError> for InvalidArgument {
    fn from(e: VolumeIdError) -> InvalidArgument {
        InvalidArgument(e.to_string())
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, FIELD).to_string()
}

/// A volume ID of a request as the CSI spec wants it answered: not ours
/// → NOT_FOUND, ours but malformed → INVALID_ARGUMENT.
pub fn decode_or_status(volume_id: &str) -> Result<VolumeId, tonic::Status> {
    VolumeId::decode(volume_id).map_err(|e| match e {
        VolumeIdError::Foreign => tonic::Status::not_found(format!(
            "volume {volume_id} does not exist (not issued by this driver)"
        )),
        VolumeIdError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
    })
}

impl VolumeId {
    pub fn encode(&self) -> String {
        let mut fields: Vec<String> = vec!["v1".into(), self.location.kind().into()];
        match &self.location {
            Source::Local { root } => fields.push(enc(&root.to_string_lossy())),
            Source::Nfs { host, port, path } => {
                fields.push(enc(host));
                fields.push(port.map(|p| p.to_string()).unwrap_or_default());
                fields.push(enc(path));
            }
            Source::S3 {
                bucket,
                prefix,
                endpoint,
                region,
            } => {
                fields.push(enc(bucket));
                fields.push(enc(prefix));
                fields.push(enc(endpoint.as_deref().unwrap_or("")));
                fields.push(enc(region.as_deref().unwrap_or("")));
            }
        }
        fields.push(enc(self.sub.as_str()));
        fields.push(self.on_delete.as_str().into());
        fields.join("#")
    }

    pub fn decode(text: &str) -> Result<VolumeId, VolumeIdError> {
        if !text.starts_with(PREFIX) {
            return Err(VolumeIdError::Foreign);
        }
        let bad = |why: String| VolumeIdError::Invalid(why);
        let raw: Vec<&str> = text.split('#').collect();
        let mut fields = Vec::with_capacity(raw.len());
        for f in &raw {
            let decoded = percent_decode_str(f)
                .decode_utf8()
                .map_err(|_| bad("a field is not UTF-8 after unescaping".into()))?
                .into_owned();
            // Only the canonical escaping is accepted: `%2F`, `%2E` and
            // friends are never produced by encode(), so they are refused.
            if enc(&decoded) != *f {
                return Err(bad(
                    "non-canonical escape (escaped '/', '.' or similar)".into()
                ));
            }
            fields.push(decoded);
        }
        let (kind, rest) = (fields[1].as_str(), &fields[2..]);
        let expect = |n: usize| -> Result<(), VolumeIdError> {
            if rest.len() == n {
                Ok(())
            } else {
                Err(bad(format!(
                    "a {kind} id has {} fields, got {}",
                    n + 2,
                    rest.len() + 2
                )))
            }
        };
        let abs = |v: &str| parse_abs_path("volume id", v).map_err(|e| bad(e.0));
        let location = match kind {
            "file" => {
                expect(3)?;
                Source::Local {
                    root: PathBuf::from(abs(&rest[0])?),
                }
            }
            "nfs" => {
                expect(5)?;
                let port = match rest[1].as_str() {
                    "" => None,
                    p => Some(p.parse().map_err(|_| bad(format!("bad port '{p}'")))?),
                };
                // Ids issued before hosts were stored without brackets
                // may carry "[v6]": nfs_host takes both.
                let host = nfs_host(&rest[0]).ok_or_else(|| bad("bad NFS server".into()))?;
                Source::Nfs {
                    host,
                    port,
                    path: abs(&rest[2])?,
                }
            }
            "s3" => {
                expect(6)?;
                if !bucket_name_ok(&rest[0]) {
                    return Err(bad("bad bucket".into()));
                }
                let prefix = if rest[1].is_empty() {
                    String::new()
                } else {
                    parse_sub_path(&rest[1]).map_err(|e| bad(format!("prefix: {e}")))?;
                    rest[1].clone()
                };
                let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
                Source::S3 {
                    bucket: rest[0].clone(),
                    prefix,
                    endpoint: opt(&rest[2]),
                    region: opt(&rest[3]),
                }
            }
            other => return Err(bad(format!("unknown backend kind '{other}'"))),
        };
        let n = rest.len();
        let sub = if rest[n - 2].is_empty() {
            BackendPath::root()
        } else {
            parse_sub_path(&rest[n - 2]).map_err(|e| bad(format!("sub-path: {e}")))?
        };
        let on_delete = OnDelete::parse(&rest[n - 1]).map_err(|e| bad(e.0))?;
        Ok(VolumeId {
            location,
            sub,
            on_delete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(root: &str, sub: &str) -> VolumeId {
        VolumeId {
            location: Source::Local { root: root.into() },
            sub: parse_sub_path(sub).unwrap(),
            on_delete: OnDelete::Archive,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let ids = [
            local("/srv/my data#1", "team a/pvc-1%x"),
            VolumeId {
                location: Source::Nfs {
                    host: "10.0.0.5".into(),
                    port: Some(2049),
                    path: "/exports/k8s".into(),
                },
                sub: parse_sub_path("ns/pvc").unwrap(),
                on_delete: OnDelete::Retain,
            },
            VolumeId {
                location: Source::S3 {
                    bucket: "bkt".into(),
                    prefix: "a/b".into(),
                    endpoint: Some("http://127.0.0.1:8333".into()),
                    region: None,
                },
                sub: BackendPath::root(),
                on_delete: OnDelete::Delete,
            },
        ];
        for id in ids {
            let text = id.encode();
            assert_eq!(VolumeId::decode(&text).unwrap(), id, "{text}");
        }
        assert_eq!(
            local("/srv/my data#1", "team a/pvc-1%x").encode(),
            "v1#file#/srv/my%20data%231#team%20a/pvc-1%25x#archive"
        );
    }

    #[test]
    fn foreign_ids_are_unknown_not_invalid() {
        assert_eq!(
            VolumeId::decode("reallyfakevolumeid"),
            Err(VolumeIdError::Foreign)
        );
    }

    #[test]
    fn ids_cannot_escape_the_source() {
        for evil in [
            "v1#file#/srv#../etc#delete",
            "v1#file#/srv#a/../../etc#delete",
            "v1#file#/srv#/etc#delete",
            "v1#file#/srv#a%2F..%2F..%2Fetc#delete",
            "v1#file#/srv#%2E%2E#delete",
            "v1#file#/srv#a//b#delete",
            "v1#file#relative#a#delete",
            "v1#file#/srv/../etc#a#delete",
            "v1#file#/srv#a#shred",
            "v1#file#/srv#a",
            "v1#gopher#x#a#delete",
            "v1#nfs#h#notaport#/e#a#delete",
            "v1#s3#b#../p###a#delete",
        ] {
            assert!(
                matches!(VolumeId::decode(evil), Err(VolumeIdError::Invalid(_))),
                "{evil}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Every source, with or without an S3 endpoint and region, comes
        /// back from its volume ID unchanged.
        #[test]
        fn every_source_round_trips_through_a_volume_id(
            source in crate::backend::source::tests::any_source(),
            endpoint in proptest::option::of("https?://[a-z0-9.-]{1,12}(:[0-9]{1,5})?"),
            region in proptest::option::of("[a-z]{2}-[a-z]{1,8}-[0-9]"),
        ) {
            let id = VolumeId {
                location: source.with_s3_site(endpoint, region),
                sub: parse_sub_path("ns/pvc").unwrap(),
                on_delete: OnDelete::Delete,
            };
            proptest::prop_assert_eq!(VolumeId::decode(&id.encode()), Ok(id));
        }
    }
}
