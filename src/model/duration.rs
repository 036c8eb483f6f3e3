//! Durations as the config and command line write them.

use anyhow::{bail, Result};

/// `7d`, `12h`, `30m`, `45s` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration `{s}`: use e.g. 7d, 12h, 30m, 45s or 0"))?;
    if n < 0 {
        bail!("invalid duration `{s}`: must not be negative");
    }
    n.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("duration `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("12h").unwrap(), 43_200);
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert!(parse_duration("-1d").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
