//! JVM artifacts an image needs, resolved with Maven on the host from a pom in the repo and
//! checked against the SHA-256 sums committed beside it.
//!
//! Maven runs on the host, not inside the image build, so that the user's own Maven settings
//! (a mirror, a proxy, credentials) decide where jars come from; the repo names no repository.
//! The sums make the result independent of where it came from: a mirror serving another file
//! under the same coordinates fails the build instead of changing the image.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::stack::{assets, JarSet};

impl JarSet {
    fn pom(&self) -> Result<&'static [u8]> {
        embedded(&format!("{}/pom.xml", self.folder))
    }

    fn sums_text(&self) -> Result<&'static str> {
        let path = format!("{}/jars.sha256", self.folder);
        std::str::from_utf8(embedded(&path)?).with_context(|| format!("{path} is not UTF-8"))
    }

    /// File name -> SHA-256 (lower-case hex), as `sha256sum` prints them.
    pub fn expected(&self) -> Result<BTreeMap<String, String>> {
        parse_sums(self.sums_text()?)
            .with_context(|| format!("reading {}/jars.sha256", self.folder))
    }

    /// Cache folder of this exact pom and sum list.
    fn cache_dir(&self) -> Result<PathBuf> {
        let mut h = Sha256::new();
        h.update(self.pom()?);
        h.update(self.sums_text()?.as_bytes());
        let key = hex::encode(&h.finalize()[..8]);
        Ok(cache_root().join(format!("{}-{key}", self.folder.replace('/', "_"))))
    }

    /// The verified jars (name, bytes), resolving them with Maven when they are not cached yet.
    pub async fn resolve(&self, progress: &dyn Fn(String)) -> Result<Vec<(String, Vec<u8>)>> {
        let expected = self.expected()?;
        let dir = self.cache_dir()?;
        if let Ok(jars) = verified(&dir, &expected) {
            return Ok(jars);
        }
        // Images build side by side, but two Mavens writing one local repository can leave a
        // half-downloaded artifact behind: resolve one set at a time.
        static MAVEN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_maven = MAVEN.lock().await;
        if let Ok(jars) = verified(&dir, &expected) {
            return Ok(jars);
        }
        progress(format!("resolving {} jars with Maven ({})", expected.len(), self.folder));
        self.run_maven(&dir).await?;
        verified(&dir, &expected).map_err(|e| {
            anyhow!(
                "{e:#}: the jars Maven resolved for {} differ from {}/jars.sha256; if your Maven mirror serves other files, fix the mirror, or after checking the new jars run scripts/pin-jars.sh {}",
                self.folder,
                self.folder,
                self.folder
            )
        })
    }

    async fn run_maven(&self, dir: &Path) -> Result<()> {
        let mvn = super::images::which("mvn").ok_or_else(|| {
            anyhow!("the lab's images take their jars from Maven, which is not installed: `apt-get install maven` (as root), then run the command again")
        })?;
        let work = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let pom = work.join("pom.xml");
        std::fs::write(&pom, self.pom()?).with_context(|| format!("writing {}", pom.display()))?;
        let out = tokio::process::Command::new(mvn)
            .args(["-B", "-q", "-Dstyle.color=never", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", work.join("jars").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running mvn")?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
            bail!(
                "Maven could not resolve the jars of {} (check the network or your Maven settings' mirror):\n{}",
                self.folder,
                super::images::tail_lines(&text, 25)
            );
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(work.join("jars"), dir)
            .with_context(|| format!("moving the resolved jars to {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }
}

fn embedded(path: &str) -> Result<&'static [u8]> {
    assets::FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, b)| *b)
        .ok_or_else(|| anyhow!("{path} is not embedded in this labctl build"))
}

/// `~/.cache/labctl/jars` (or `$LABCTL_JAR_CACHE`).
fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("LABCTL_JAR_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/labctl/jars")
}

/// Parses `sha256sum` output: `<64 hex>  <file name>` per line; blank lines and `#` comments
/// are allowed.
pub fn parse_sums(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (sum, name) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| anyhow!("line {}: expected `<sha256>  <file>`", i + 1))?;
        let name = name.trim().trim_start_matches('*');
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("line {}: `{sum}` is not a SHA-256", i + 1);
        }
        if name.is_empty() || name.contains('/') {
            bail!("line {}: `{name}` is not a plain file name", i + 1);
        }
        if out.insert(name.to_string(), sum.to_ascii_lowercase()).is_some() {
            bail!("line {}: {name} is listed twice", i + 1);
        }
    }
    if out.is_empty() {
        bail!("no jar is listed");
    }
    Ok(out)
}

/// The jars in `dir` when they are exactly the expected set with the expected sums.
fn verified(dir: &Path, expected: &BTreeMap<String, String>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path())
            .with_context(|| format!("reading {}", entry.path().display()))?;
        found.insert(name, bytes);
    }
    check_set(expected, &found)?;
    Ok(found.into_iter().collect())
}

/// Compares what was resolved with what is pinned: same names, same sums.
fn check_set(expected: &BTreeMap<String, String>, found: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    for name in expected.keys() {
        if !found.contains_key(name) {
            bail!("{name} is pinned but was not resolved");
        }
    }
    for (name, bytes) in found {
        let Some(want) = expected.get(name) else { bail!("{name} was resolved but is not pinned") };
        let got = hex::encode(Sha256::digest(bytes));
        if &got != want {
            bail!("{name} has SHA-256 {got}, pinned {want}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // sha256("test")

    #[test]
    fn sums_parse_as_sha256sum_prints_them() {
        let m = parse_sums(&format!("# pinned\n{A}  a.jar\n{A} *b.jar\n")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["b.jar"], A);
        assert!(parse_sums("abc  a.jar").is_err());
        assert!(parse_sums(&format!("{A}  ../a.jar")).is_err());
        assert!(parse_sums(&format!("{A}  a.jar\n{A}  a.jar")).is_err());
        assert!(parse_sums("\n# nothing\n").is_err());
    }

    #[test]
    fn a_changed_missing_or_extra_jar_is_refused() {
        let expected = parse_sums(&format!("{A}  a.jar")).unwrap();
        let ok = BTreeMap::from([("a.jar".to_string(), b"test".to_vec())]);
        check_set(&expected, &ok).unwrap();
        let changed = BTreeMap::from([("a.jar".to_string(), b"tast".to_vec())]);
        assert!(check_set(&expected, &changed).unwrap_err().to_string().contains("pinned"));
        assert!(check_set(&expected, &BTreeMap::new())
            .unwrap_err()
            .to_string()
            .contains("not resolved"));
        let mut extra = ok.clone();
        extra.insert("x.jar".into(), vec![]);
        assert!(check_set(&expected, &extra).unwrap_err().to_string().contains("not pinned"));
    }

    #[test]
    fn every_pinned_set_is_embedded_and_parses() {
        for spec in crate::stack::IMAGES {
            if let Some(jars) = spec.jars {
                jars.pom().unwrap();
                jars.expected().unwrap();
            }
        }
    }
}
