//! Cache keys → object names: `prefix/` + one folder per namespace level + the hash.
//!
//! A key is split at every `:`, so `ns:hash` is stored as `prefix/ns/hash` and the nested
//! `ns:sub:hash` as `prefix/ns/sub/hash` (LiteLLM's S3 backend does the same:
//! `key.replace(":", "/")`). Each part is percent-encoded the way `object_store` encodes path
//! segments (a `/` inside a namespace becomes `%2F`, `.` and `..` become `%2E`...), and an empty
//! part becomes `%empty`, a name the encoding can never produce otherwise. The mapping is
//! therefore one-to-one, and "every key under `ns:`" is exactly "every object under
//! `prefix/ns/`": `prefix/nsx/...` is a different folder and never matches.

use object_store::path::{Path, PathPart};

/// The object name of an empty key part (`a::b`, `ns:`). `%` followed by a non-hex letter
/// never comes out of the segment encoding, so no other part maps here.
const EMPTY_PART: &str = "%empty";

/// The folder (under the prefix) of the health-check objects `ping` writes and deletes. Like
/// [`EMPTY_PART`], no key part ever encodes to it.
const HEALTH_FOLDER: &str = "%llm-cache-health";

/// Maps cache keys to object paths under an optional prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectNaming {
    /// The prefix as a path (`""` = the bucket root).
    prefix: String,
}

impl ObjectNaming {
    /// Object names under `prefix` (`s3_path`, `gcs_path`, `azure_blob_path`); `None` or `""`
    /// stores at the bucket root.
    ///
    /// Leading, trailing and repeated `/` are ignored (`"/cache//llm/"` = `cache/llm`), as
    /// LiteLLM strips the trailing one.
    ///
    /// # Errors
    /// A message (for the caller to attach to its configuration key) when a part is `.` or
    /// `..` or holds a control character.
    pub fn new(prefix: Option<&str>) -> Result<Self, String> {
        let parts: Vec<&str> = prefix
            .unwrap_or("")
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        for p in &parts {
            PathPart::parse(p).map_err(|e| format!("invalid object name prefix: {e}"))?;
        }
        Ok(ObjectNaming {
            prefix: parts.join("/"),
        })
    }

    /// The prefix (`""` when objects live at the bucket root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The folder holding every object of this configuration (`None`: the whole bucket).
    pub fn root(&self) -> Option<Path> {
        (!self.prefix.is_empty()).then(|| parse_built(self.prefix.clone()))
    }

    /// The object path of a cache key.
    pub fn object_path(&self, key: &str) -> Path {
        self.join(key)
    }

    /// The folder holding every key of namespace `ns` (the keys `ns:*`).
    pub fn namespace_folder(&self, ns: &str) -> Path {
        self.join(ns)
    }

    /// A fresh health-check object path (unique per call).
    pub(crate) fn health_object(&self, id: &str) -> Path {
        let mut s = self.prefix.clone();
        for part in [HEALTH_FOLDER, id] {
            if !s.is_empty() {
                s.push('/');
            }
            s.push_str(part);
        }
        parse_built(s)
    }

    fn join(&self, key: &str) -> Path {
        let mut s = String::with_capacity(self.prefix.len() + key.len() + 8);
        s.push_str(&self.prefix);
        for part in key.split(':') {
            if !s.is_empty() {
                s.push('/');
            }
            if part.is_empty() {
                s.push_str(EMPTY_PART);
            } else {
                s.push_str(PathPart::from(part).as_ref());
            }
        }
        parse_built(s)
    }
}

/// Every part was validated (prefix) or encoded (key parts), so parsing cannot fail; should it
/// ever, the parts are encoded once more rather than panicking.
fn parse_built(s: String) -> Path {
    match Path::parse(&s) {
        Ok(p) => p,
        Err(_) => Path::from_iter(s.split('/').map(PathPart::from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(prefix: Option<&str>) -> ObjectNaming {
        ObjectNaming::new(prefix).unwrap()
    }

    #[test]
    fn namespaces_become_folders() {
        let hash = "a".repeat(64);
        let naming = n(Some("llm/cache/"));
        assert_eq!(
            naming.object_path(&format!("ns:{hash}")).as_ref(),
            format!("llm/cache/ns/{hash}")
        );
        assert_eq!(
            naming.object_path(&format!("ns:sub:{hash}")).as_ref(),
            format!("llm/cache/ns/sub/{hash}")
        );
        assert_eq!(
            naming.object_path(&hash).as_ref(),
            format!("llm/cache/{hash}")
        );
        assert_eq!(n(None).object_path("ns:h").as_ref(), "ns/h");
        assert_eq!(n(Some("//a//b/")).prefix(), "a/b");
        assert_eq!(n(Some("")).root(), None);
        assert_eq!(n(Some("/")).root(), None);
        assert_eq!(naming.root().unwrap().as_ref(), "llm/cache");
    }

    #[test]
    fn mapping_is_one_to_one() {
        let naming = n(Some("p"));
        let keys = [
            "a:b",
            "a/b",
            "a:b:c",
            "a/b:c",
            "a::b",
            "a:%empty:b",
            "a:%2Fb",
            "a:.",
            "a:%2E",
            ":a",
            "a:",
            "a",
            "a:\0",
            "a:%00",
            "a:..",
            "é:ü",
        ];
        let mut seen = std::collections::HashMap::new();
        for k in keys {
            let path = naming.object_path(k).to_string();
            if let Some(other) = seen.insert(path.clone(), k) {
                panic!("{k:?} and {other:?} both map to {path}");
            }
        }
        assert_eq!(naming.object_path("a/b").as_ref(), "p/a%2Fb");
        assert_eq!(naming.object_path("a::b").as_ref(), "p/a/%empty/b");
        assert_eq!(naming.object_path("a:..").as_ref(), "p/a/%2E%2E");
    }

    #[test]
    fn namespace_folder_holds_exactly_its_keys() {
        let naming = n(Some("p"));
        let folder = naming.namespace_folder("ns");
        for key in ["ns:a", "ns:sub:b", "ns:", "ns::x"] {
            assert!(
                naming.object_path(key).prefix_matches(&folder),
                "{key} must be under {folder}"
            );
        }
        for key in ["nsx:a", "ns", "other:ns:a", "n:s"] {
            let path = naming.object_path(key);
            assert!(
                !path.prefix_matches(&folder) || path == folder,
                "{key} must not be under {folder}"
            );
        }
        // A nested namespace is a nested folder.
        let nested = naming.namespace_folder("ns:sub");
        assert!(naming.object_path("ns:sub:a").prefix_matches(&nested));
        assert!(!naming.object_path("ns:subx:a").prefix_matches(&nested));
    }

    #[test]
    fn health_objects_never_collide_with_keys() {
        let naming = n(Some("p"));
        let health = naming.health_object("1-2");
        assert_eq!(health.as_ref(), "p/%llm-cache-health/1-2");
        assert_ne!(naming.object_path("%llm-cache-health:1-2"), health);
    }

    #[test]
    fn invalid_prefixes_are_rejected() {
        assert!(ObjectNaming::new(Some("a/../b")).is_err());
        assert!(ObjectNaming::new(Some("a/./b")).is_err());
        assert!(ObjectNaming::new(Some("a/\nb")).is_err());
    }
}
