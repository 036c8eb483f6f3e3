//! Append-only JSON-lines files in the state folder: what labctl did that no service
//! remembers (exports followed to their end, windows repaired). Each record is one line
//! written in one call, so two labctls appending at once do not interleave within a line; a
//! file is cut back to its newest `keep` lines when it grows past twice as many.

use std::{
    fs,
    io::{BufRead, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

/// Appends `rec` to the journal at `path` (owner-only, like the lab's state).
pub fn append<T: Serialize + DeserializeOwned>(path: &Path, rec: &T, keep: usize) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut line = serde_json::to_string(rec)?;
    line.push('\n');
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    drop(f);
    let all: Vec<T> = read_all(path)?;
    if all.len() > 2 * keep {
        let tail: String = all[all.len() - keep..]
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .map(|l| l + "\n")
            .collect();
        let tmp = path.with_extension("jsonl.tmp");
        fs::write(&tmp, tail).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    }
    Ok(())
}

/// Every record, oldest first; a line that does not parse (a torn write) is skipped.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Ok(r) = serde_json::from_str::<T>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_skips_torn_lines_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("labctl-journal-{}", std::process::id()));
        let path = dir.join("x.jsonl");
        let _ = fs::remove_dir_all(&dir);
        for i in 0..5u32 {
            append(&path, &i, 2).unwrap();
        }
        // Past 2 x 2 lines the file is cut back to the newest 2.
        assert_eq!(read_all::<u32>(&path).unwrap(), vec![3, 4]);
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{torn\n").unwrap();
        append(&path, &5u32, 2).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), vec![3, 4, 5]);
        assert!(read_all::<u32>(&dir.join("none.jsonl")).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
