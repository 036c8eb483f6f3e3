//! The message on the topic: JSON, one sensor value each, keyed by `machine_id`, with the
//! timestamp as `YYYY-MM-DDTHH:MM:SS` (UTC, 'T' separator, no zone suffix) as the Flink source
//! expects. Field names come from `schema::MESSAGE_FIELDS`.
//!
//! Encoding is hand-written because it is the generator's hot path: everything constant per
//! machine and sensor is rendered once, per message only the value and timestamp are written.

use crate::model::schema::MESSAGE_FIELDS;

use crate::model::fleet::{Fleet, Sensor, SENSORS};

/// Pre-rendered JSON around the value and the timestamp of one machine's sensor.
#[derive(Debug, Clone)]
pub struct Template {
    /// `{"machine_id":"CNC-1",...,"value":`
    head: Vec<u8>,
    /// `,"unit":"C","timestamp":"`
    middle: Vec<u8>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

impl Template {
    pub fn new(machine_id: &str, machine_type: &str, sensor: Sensor) -> Self {
        // The order of fields follows the schema; only the value and timestamp vary.
        let f = |name: &str| {
            assert!(
                MESSAGE_FIELDS.iter().any(|c| c.name == name),
                "field {name} not in schema::MESSAGE_FIELDS"
            );
            json_str(name)
        };
        let head = format!(
            "{{{}:{},{}:{},{}:{},{}:",
            f("machine_id"),
            json_str(machine_id),
            f("machine_type"),
            json_str(machine_type),
            f("sensor_type"),
            json_str(sensor.name()),
            f("value")
        );
        let middle = format!(",{}:{},{}:\"", f("unit"), json_str(sensor.unit()), f("timestamp"));
        Self { head: head.into_bytes(), middle: middle.into_bytes() }
    }

    /// Appends the whole message to `out`.
    #[inline]
    pub fn encode(&self, value: f64, timestamp: &[u8; 19], out: &mut Vec<u8>) {
        self.encode_with(value, timestamp, out)
    }

    /// Same, with any timestamp text (e.g. with a fraction of a second), for tests and tools.
    #[inline]
    pub fn encode_with(&self, value: f64, timestamp: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        write_fixed3(value, out);
        out.extend_from_slice(&self.middle);
        out.extend_from_slice(timestamp);
        out.extend_from_slice(b"\"}");
    }
}

/// Templates for every machine and sensor of a fleet, indexed `[machine][sensor]`.
pub fn templates(fleet: &Fleet) -> Vec<[Template; 3]> {
    fleet.machines.iter().map(|m| SENSORS.map(|s| Template::new(&m.id, m.kind.name(), s))).collect()
}

/// Writes `v` rounded to 3 decimals without trailing zeros beyond one (`70.25`, `6.0`), the
/// precision of the original lab's messages. Values here are bounded well inside i64.
#[inline]
pub fn write_fixed3(v: f64, out: &mut Vec<u8>) {
    let scaled = (v * 1000.0).round() as i64;
    let (neg, mut n) = (scaled < 0, scaled.unsigned_abs());
    if neg {
        out.push(b'-');
    }
    let mut frac = (n % 1000) as u32;
    n /= 1000;
    write_u64(n, out);
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let mut digits = 3;
    while frac.is_multiple_of(10) {
        frac /= 10;
        digits -= 1;
    }
    let s = format_frac(frac, digits);
    out.extend_from_slice(&s[..digits]);
}

#[inline]
fn format_frac(mut frac: u32, digits: usize) -> [u8; 3] {
    let mut s = [b'0'; 3];
    for i in (0..digits).rev() {
        s[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    s
}

#[inline]
fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), without allocating.
pub fn format_timestamp(epoch_secs: i64) -> [u8; 19] {
    let days = epoch_secs.div_euclid(86_400);
    let secs = epoch_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00";
    let put = |out: &mut [u8; 19], at: usize, v: i64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, y, 4);
    put(&mut out, 5, m, 2);
    put(&mut out, 8, d, 2);
    put(&mut out, 11, secs / 3600, 2);
    put(&mut out, 14, secs / 60 % 60, 2);
    put(&mut out, 17, secs % 60, 2);
    out
}

/// Parses what `format_timestamp` writes (and the same with a fraction of a second, which is
/// dropped) back into Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(t.and_utc().timestamp())
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono() {
        for secs in
            [0i64, 1_696_932_000, 1_700_000_000, 951_782_400 /* 2000-02-29 */, 4_102_444_799]
        {
            let ours = String::from_utf8(format_timestamp(secs).to_vec()).unwrap();
            let theirs = chrono::DateTime::from_timestamp(secs, 0)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
            assert_eq!(ours, theirs);
            assert_eq!(parse_timestamp(&ours), Some(secs));
        }
        assert_eq!(&format_timestamp(1_696_932_000), b"2023-10-10T10:00:00");
        assert_eq!(parse_timestamp("2023-10-10T10:00:00.123"), Some(1_696_932_000));
    }

    #[test]
    fn fixed3_formatting() {
        let cases = [
            (70.25, "70.25"),
            (6.0, "6.0"),
            (0.0004, "0.0"),
            (0.0005, "0.001"),
            (-1.5, "-1.5"),
            (320.1234, "320.123"),
            (0.05, "0.05"),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            write_fixed3(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{v}");
        }
    }

    #[test]
    fn message_is_valid_json_with_schema_fields() {
        let t = Template::new("CNC-1", "CNC", Sensor::Pressure);
        let mut out = Vec::new();
        t.encode(6.1234, &format_timestamp(1_696_932_000), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["machine_id"], "CNC-1");
        assert_eq!(v["machine_type"], "CNC");
        assert_eq!(v["sensor_type"], "pressure");
        assert_eq!(v["value"], 6.123);
        assert_eq!(v["unit"], "bar");
        assert_eq!(v["timestamp"], "2023-10-10T10:00:00");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        let mut schema: Vec<_> = MESSAGE_FIELDS.iter().map(|c| c.name.to_string()).collect();
        schema.sort();
        let mut k = keys.clone();
        k.sort();
        assert_eq!(k, schema);
    }
}
