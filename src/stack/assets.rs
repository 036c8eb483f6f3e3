//! Build inputs embedded at compile time (see build.rs): Dockerfiles, job sources, templates.

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// One embedded file as text.
pub fn text(path: &str) -> Option<&'static str> {
    FILES.iter().find(|(p, _)| *p == path).and_then(|(_, b)| std::str::from_utf8(b).ok())
}
