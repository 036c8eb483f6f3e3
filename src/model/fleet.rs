//! The fleet and its physics: per-type nominal values with Gaussian noise, a slow drift and rare
//! anomaly spikes, clamped to plausible ranges.
//!
//! Every value is a pure function of (seed, machine, sensor, tick): the random stream of a
//! machine is ChaCha8 with the machine as stream number, positioned at the tick. A run resumed
//! at tick N therefore produces exactly what an uninterrupted run would have, and `--seed`
//! makes any run reproducible bit for bit.

use std::f64::consts::TAU;

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum MachineType {
    #[serde(rename = "CNC")]
    Cnc,
    Lathe,
    Welder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sensor {
    Temperature,
    Pressure,
    Vibration,
}

pub const SENSORS: [Sensor; 3] = [Sensor::Temperature, Sensor::Pressure, Sensor::Vibration];
pub const MACHINE_TYPES: [MachineType; 3] =
    [MachineType::Cnc, MachineType::Lathe, MachineType::Welder];

/// A machine id as the generator makes them (`CNC-1`, `LATHE-12`); checked so that a typo
/// fails early with a clear message. Callers pass it to SQL only as a parameter.
pub fn check_machine_id(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a machine id (letters, digits, `-`, `_`, `.`; at most 64), e.g. CNC-1"
        ))
    }
}

/// One of [`SENSORS`] by name, ignoring case; the lower-case name.
pub fn check_sensor(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if SENSORS.iter().any(|k| k.name() == lower) {
        Ok(lower)
    } else {
        let known: Vec<_> = SENSORS.iter().map(|k| k.name()).collect();
        Err(format!("unknown sensor type `{s}`; known: {}", known.join(", ")))
    }
}

impl Sensor {
    pub fn name(self) -> &'static str {
        match self {
            Sensor::Temperature => "temperature",
            Sensor::Pressure => "pressure",
            Sensor::Vibration => "vibration",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Sensor::Temperature => "C",
            Sensor::Pressure => "bar",
            Sensor::Vibration => "mm/s",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl MachineType {
    /// The name used in messages and machine ids' prefixes.
    pub fn name(self) -> &'static str {
        match self {
            MachineType::Cnc => "CNC",
            MachineType::Lathe => "Lathe",
            MachineType::Welder => "Welder",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            MachineType::Cnc => "CNC",
            MachineType::Lathe => "LATHE",
            MachineType::Welder => "WELDER",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cnc" => Ok(MachineType::Cnc),
            "lathe" => Ok(MachineType::Lathe),
            "welder" => Ok(MachineType::Welder),
            _ => bail!("unknown machine type `{s}`; known types: CNC, Lathe, Welder"),
        }
    }

    /// Nominal behaviour of one sensor on this type of machine (same means and deviations as
    /// the original lab's producer, so the aggregates look alike).
    pub fn profile(self, sensor: Sensor) -> SensorProfile {
        use MachineType::*;
        use Sensor::*;
        let (mean, std, min, max) = match (self, sensor) {
            (Cnc, Temperature) => (70.0, 2.5, -20.0, 200.0),
            (Cnc, Pressure) => (6.0, 0.3, 0.0, 20.0),
            (Cnc, Vibration) => (0.8, 0.1, 0.0, 50.0),
            (Lathe, Temperature) => (55.0, 2.0, -20.0, 200.0),
            (Lathe, Pressure) => (4.5, 0.25, 0.0, 20.0),
            (Lathe, Vibration) => (0.5, 0.08, 0.0, 50.0),
            (Welder, Temperature) => (320.0, 15.0, -20.0, 1500.0),
            (Welder, Pressure) => (2.0, 0.2, 0.0, 20.0),
            (Welder, Vibration) => (0.3, 0.05, 0.0, 50.0),
        };
        SensorProfile { mean, std, min, max }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorProfile {
    pub mean: f64,
    pub std: f64,
    /// Physical range; readings are clamped into it (no negative pressure).
    pub min: f64,
    pub max: f64,
}

/// Drift: a slow swing of this many standard deviations over `DRIFT_PERIOD_S`.
const DRIFT_AMPLITUDE_STD: f64 = 1.5;
const DRIFT_PERIOD_S: f64 = 6.0 * 3600.0;
/// Chance of an anomaly spike per reading, and its size in standard deviations.
pub const ANOMALY_PROBABILITY: f64 = 0.0005;
const ANOMALY_SIZE_STD: f64 = 8.0;
/// Random words reserved per machine and tick (ziggurat sampling uses a variable number).
const WORDS_PER_TICK: u128 = 64;

#[derive(Debug, Clone)]
pub struct Machine {
    pub id: String,
    pub kind: MachineType,
    /// Stream number of this machine's random sequence.
    pub stream: u64,
    profiles: [SensorProfile; 3],
    noise: [Normal<f64>; 3],
    phase: f64,
}

#[derive(Debug, Clone)]
pub struct Fleet {
    pub machines: Vec<Machine>,
    pub seed: u64,
}

impl Fleet {
    /// `per_type` machines of each listed type, ids like `CNC-1`, `LATHE-2`.
    pub fn new(types: &[(MachineType, u32)], seed: u64) -> Result<Self> {
        let total: u32 = types.iter().map(|(_, n)| n).sum();
        if total == 0 {
            bail!("the fleet is empty: give at least one machine (e.g. --machines 1)");
        }
        if total > 10_000 {
            bail!("a fleet of {total} machines is more than this lab is sized for (at most 10000)");
        }
        let mut machines = Vec::new();
        for &(kind, n) in types {
            for i in 1..=n {
                let stream = machines.len() as u64;
                let profiles = SENSORS.map(|s| kind.profile(s));
                let noise =
                    profiles.map(|p| Normal::new(0.0, p.std).expect("std is finite and positive"));
                // Machines of one type drift out of phase with each other.
                let phase = (stream as f64 * 0.618_033_988_75).fract() * TAU;
                machines.push(Machine {
                    id: format!("{}-{i}", kind.id_prefix()),
                    kind,
                    stream,
                    profiles,
                    noise,
                    phase,
                });
            }
        }
        Ok(Self { machines, seed })
    }

    pub fn default_fleet(seed: u64) -> Self {
        Self::new(&MACHINE_TYPES.map(|t| (t, 1)), seed).expect("default fleet is valid")
    }

    pub fn messages_per_tick(&self) -> usize {
        self.machines.len() * SENSORS.len()
    }
}

/// A source of readings for one machine, reused across ticks to avoid allocation.
pub struct MachineRng {
    rng: ChaCha8Rng,
}

impl MachineRng {
    pub fn new(seed: u64, machine: &Machine) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(machine.stream);
        Self { rng }
    }

    /// The three sensor values of `machine` at `tick` (seconds since the epoch / interval).
    pub fn readings(&mut self, machine: &Machine, tick: i64, epoch_secs: i64) -> [f64; 3] {
        self.rng.set_word_pos((tick as u64 as u128) * WORDS_PER_TICK);
        let swing = (TAU * epoch_secs as f64 / DRIFT_PERIOD_S + machine.phase).sin();
        let mut out = [0.0; 3];
        for (i, p) in machine.profiles.iter().enumerate() {
            let mut v = p.mean
                + DRIFT_AMPLITUDE_STD * p.std * swing
                + machine.noise[i].sample(&mut self.rng);
            if self.rng.gen_bool(ANOMALY_PROBABILITY) {
                v += ANOMALY_SIZE_STD * p.std;
            }
            out[i] = v.clamp(p.min, p.max);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn sample_mean_and_std_match_profile() {
        // Over whole drift periods the sinusoid averages out; its variance adds (A*std)^2/2.
        let fleet = Fleet::default_fleet(7);
        for m in &fleet.machines {
            let mut rng = MachineRng::new(7, m);
            let n = (4.0 * DRIFT_PERIOD_S / 5.0) as i64; // four periods at 5 s
            let mut cols: Vec<Vec<f64>> = (0..3).map(|_| Vec::with_capacity(n as usize)).collect();
            for tick in 0..n {
                let r = rng.readings(m, tick, tick * 5);
                for s in 0..3 {
                    cols[s].push(r[s]);
                }
            }
            for s in SENSORS {
                let p = m.kind.profile(s);
                let (mean, std) = stats(&cols[s.index()]);
                let expected_std = p.std * (1.0 + DRIFT_AMPLITUDE_STD.powi(2) / 2.0).sqrt();
                assert!(
                    (mean - p.mean).abs()
                        < 0.05 * p.std + ANOMALY_PROBABILITY * ANOMALY_SIZE_STD * p.std * 2.0,
                    "{} {}: mean {mean} vs {}",
                    m.id,
                    s.name(),
                    p.mean
                );
                assert!(
                    (std / expected_std - 1.0).abs() < 0.05,
                    "{} {}: std {std} vs {expected_std}",
                    m.id,
                    s.name()
                );
            }
        }
    }

    #[test]
    fn values_stay_in_physical_range() {
        let fleet = Fleet::default_fleet(1);
        for m in &fleet.machines {
            let mut rng = MachineRng::new(1, m);
            for tick in 0..50_000 {
                for (i, v) in rng.readings(m, tick, tick * 5).iter().enumerate() {
                    let p = m.kind.profile(SENSORS[i]);
                    assert!(*v >= p.min && *v <= p.max && v.is_finite());
                }
            }
        }
    }

    #[test]
    fn same_seed_same_values_and_resume_is_seamless() {
        let fleet = Fleet::default_fleet(42);
        let m = &fleet.machines[1];
        let full: Vec<_> = {
            let mut r = MachineRng::new(42, m);
            (0..1000).map(|t| r.readings(m, t, t * 5)).collect()
        };
        // A fresh generator started at tick 600 gives the same values as the full run.
        let mut r = MachineRng::new(42, m);
        for t in 600..1000 {
            assert_eq!(r.readings(m, t, t * 5), full[t as usize]);
        }
        let mut other = MachineRng::new(43, m);
        assert_ne!(other.readings(m, 0, 0), full[0]);
    }

    #[test]
    fn anomalies_happen_but_rarely() {
        let fleet = Fleet::default_fleet(3);
        let m = &fleet.machines[0];
        let p = m.kind.profile(Sensor::Temperature);
        let mut r = MachineRng::new(3, m);
        let n = 200_000;
        let spikes = (0..n).filter(|&t| r.readings(m, t, 0)[0] > p.mean + 6.0 * p.std).count();
        let expected = n as f64 * ANOMALY_PROBABILITY;
        assert!(
            spikes as f64 > expected * 0.5 && (spikes as f64) < expected * 2.0,
            "{spikes} spikes, expected ~{expected}"
        );
    }

    #[test]
    fn ids_and_validation() {
        let f = Fleet::new(&[(MachineType::Cnc, 2), (MachineType::Welder, 1)], 0).unwrap();
        let ids: Vec<_> = f.machines.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["CNC-1", "CNC-2", "WELDER-1"]);
        assert!(Fleet::new(&[(MachineType::Cnc, 0)], 0).is_err());
        assert!(MachineType::parse("drill")
            .unwrap_err()
            .to_string()
            .contains("unknown machine type"));
    }
}
