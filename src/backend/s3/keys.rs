//! Paths ↔ object keys. A file `a/b` is the object `<prefix>/a/b`; a
//! directory is every key under `<prefix>/a/b/`, plus optionally the empty
//! marker object `<prefix>/a/b/` that makes an empty directory exist.

use crate::backend::BackendPath;

#[derive(Debug, Clone)]
pub struct KeyMap {
    /// Without trailing slash; "" = bucket root.
    prefix: String,
}

impl KeyMap {
    pub fn new(prefix: &str) -> KeyMap {
        KeyMap {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Key of the object for `path` (the root maps to the prefix itself,
    /// which is never an object we read or write).
    pub fn object(&self, path: &BackendPath) -> String {
        match (self.prefix.is_empty(), path.is_root()) {
            (true, _) => path.as_str().to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{}", self.prefix, path.as_str()),
        }
    }

    /// Listing prefix of directory `path`: ends with '/', or is "" for the
    /// root of a bucket-root volume. Also the key of its marker object.
    pub fn dir(&self, path: &BackendPath) -> String {
        let object = self.object(path);
        if object.is_empty() {
            object
        } else {
            format!("{object}/")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BackendPath {
        BackendPath::parse(s).unwrap()
    }

    #[test]
    fn keys_with_and_without_prefix() {
        let k = KeyMap::new("vol/one/");
        assert_eq!(k.object(&p("a/b")), "vol/one/a/b");
        assert_eq!(k.dir(&p("a")), "vol/one/a/");
        assert_eq!(k.dir(&BackendPath::root()), "vol/one/");

        let root = KeyMap::new("");
        assert_eq!(root.object(&p("a")), "a");
        assert_eq!(root.dir(&BackendPath::root()), "");
        assert_eq!(root.dir(&p("a")), "a/");
    }
}
