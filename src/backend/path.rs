//! Validated paths relative to a volume root. Parsing happens once at the
//! edge; inside, a `BackendPath` can never name anything outside the root.

use std::fmt;

use super::{BackendError, BackendResult, ErrorKind};

/// Marker inside temporary object names: `.<name>.cachalot-<id>`.
const TEMP_MARKER: &str = ".cachalot-";

/// Longest file name component we accept (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BackendPath(String);

/// Serialised as its text; parsed (and so validated) when read back, so a
/// damaged or hostile state file cannot smuggle `..` into a path.
impl serde::Serialize for BackendPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for BackendPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BackendPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl BackendPath {
    pub fn root() -> Self {
        BackendPath(String::new())
    }

    /// Parse `a/b/c` (no leading slash). Rejects `.`, `..`, empty components
    /// and NUL bytes.
    pub fn parse(path: &str) -> BackendResult<Self> {
        let mut out = BackendPath::root();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            out = out.join(component)?;
        }
        Ok(out)
    }

    /// Append one name component, validated.
    pub fn join(&self, name: &str) -> BackendResult<Self> {
        validate_name(name)?;
        if self.0.is_empty() {
            Ok(BackendPath(name.to_string()))
        } else {
            Ok(BackendPath(format!("{}/{}", self.0, name)))
        }
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Last component; empty for the root.
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Parent directory; the root's parent is the root.
    pub fn parent(&self) -> BackendPath {
        match self.0.rfind('/') {
            Some(i) => BackendPath(self.0[..i].to_string()),
            None => BackendPath::root(),
        }
    }
}

impl fmt::Display for BackendPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

fn validate_name(name: &str) -> BackendResult<()> {
    let invalid = |why: &str| {
        Err(BackendError::new(ErrorKind::InvalidArgument, "validate name", name).with_cause(why))
    };
    if name.is_empty() || name == "." || name == ".." {
        return invalid("empty, '.' or '..' is not a file name");
    }
    if name.contains('/') || name.contains('\0') {
        return invalid("a file name cannot contain '/' or NUL");
    }
    if name.len() > NAME_MAX {
        return Err(BackendError::new(
            ErrorKind::NameTooLong,
            "validate name",
            name,
        ));
    }
    Ok(())
}

/// True for our own temporary objects, which are hidden from listings and
/// lookups so applications never see a half-written file.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

/// Length of the owner part of a temp id (8 hex host + 8 hex pid).
pub const TEMP_OWNER_LEN: usize = 16;

/// Name of a temporary object for `final_name`, unique per writer:
/// `.<name>.cachalot-<owner><seq>`, all hex. The name part is shortened (on a char
/// boundary) so the result always fits NAME_MAX.
/// Where a process's sequence numbers of temp and hidden names start: the
/// current time in nanoseconds, so a process never picks a name a previous
/// one with the same pid used (in a container every first process is pid
/// 1, and a mounter taking over or recovering sessions keeps its
/// predecessor's temp files).
pub fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn temp_name_for(final_name: &str, owner: &str, seq: u64) -> String {
    let suffix = format!("{TEMP_MARKER}{owner}{seq:x}");
    let room = NAME_MAX - 1 - suffix.len();
    let mut cut = final_name.len().min(room);
    while !final_name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{}", &final_name[..cut], suffix)
}

/// Sequence numbers of hidden names chosen by the filesystem core (for open
/// files that were unlinked) start here, far above the backends' own temp
/// sequence, so the two never collide under one owner tag.
const HIDDEN_SEQ_BASE: u64 = 1 << 48;

/// A hidden name for keeping an unlinked open file's object: a temp name
/// owned by this process, so listings skip it and, should we crash, the
/// next mount's cleanup removes it like any dead writer's temp.
pub fn hidden_name_for(final_name: &str, seq: u64) -> String {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let owner = OWNER.get_or_init(super::owner::own_tag);
    temp_name_for(final_name, owner, HIDDEN_SEQ_BASE + seq)
}

/// The `<owner>` part of a temp name, if `name` is one of ours.
pub fn temp_owner(name: &str) -> Option<&str> {
    let at = name.rfind(TEMP_MARKER)?;
    let id = &name[at + TEMP_MARKER.len()..];
    let well_formed = id.len() > TEMP_OWNER_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| &id[..TEMP_OWNER_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_escapes() {
        assert!(BackendPath::parse("a/../b").is_err());
        assert!(BackendPath::parse("./a").is_err());
        assert!(BackendPath::parse("a/\0b").is_err());
        assert_eq!(BackendPath::parse("/a//b/").unwrap().as_str(), "a/b");
    }

    #[test]
    fn parent_and_name() {
        let p = BackendPath::parse("x/y/z").unwrap();
        assert_eq!(p.name(), "z");
        assert_eq!(p.parent().as_str(), "x/y");
        assert_eq!(p.parent().parent().parent(), BackendPath::root());
        assert_eq!(p.to_string(), "/x/y/z");
    }

    #[test]
    fn long_names_are_rejected_with_enametoolong() {
        let err = BackendPath::root().join(&"a".repeat(256)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NameTooLong);
    }

    #[test]
    fn temp_names_fit_and_are_recognised() {
        let long = "é".repeat(127); // 254 bytes
        let t = temp_name_for(&long, "0a1b2c3d00000063", 7);
        assert!(t.len() <= NAME_MAX, "{}", t.len());
        assert!(is_temp_name(&t));
        assert!(t.ends_with(".cachalot-0a1b2c3d000000637"), "{t}");
        assert_eq!(temp_owner(&t), Some("0a1b2c3d00000063"));
        assert!(!is_temp_name("report.cachalot-notes"));
        assert!(!is_temp_name(".hidden"));
    }
}
