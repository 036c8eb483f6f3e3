//! How an export submission is sized from the Spark workers' free cores and memory: with one
//! small worker the driver runs the tasks itself, with more it leaves them to executors.

use anyhow::{bail, Result};

use crate::clients::spark;

/// How an export submission is sized, from the workers' free cores and memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizing {
    /// Executors started for the job; 0 when the driver runs the tasks itself.
    pub executors: u32,
    pub executor_cores: u32,
    pub executor_memory_mb: u64,
    pub driver_cores: u32,
    pub driver_memory_mb: u64,
    /// Tasks that run at once.
    pub task_slots: u32,
}

/// JVM options of the driver and executors: UTC, and the serial collector: for a job of seconds
/// on a few cores G1's concurrent threads cost more than they save (measured on 2 cores, 7-day
/// export with the tasks in the driver: ~27 instead of ~34 CPU seconds, 18 instead of 23 s).
/// The client compiler alone (-XX:TieredStopAtLevel=1) saved CPU too but made the JDBC read
/// slower; not used.
/// `/dev/urandom` for SecureRandom: a fresh container's entropy pool must not stall the JVM.
const JVM_OPTIONS: &str =
    "-Duser.timezone=UTC -XX:+UseSerialGC -Djava.security.egd=file:/dev/urandom";

/// The driver also maps the class-data archive of the lab's Spark image
/// (`stack::SPARK_DRIVER_ARCHIVE`): classes loaded from it instead of from jars. A JVM without
/// that file, or whose class path does not fit it (a cluster not built by labctl), runs as
/// without the option.
fn driver_jvm_options() -> String {
    format!("{JVM_OPTIONS} -XX:SharedArchiveFile={}", crate::stack::SPARK_DRIVER_ARCHIVE)
}

impl Sizing {
    /// From the workers' free cores (all cores when fewer than 2 are free: the submission then
    /// queues). In cluster mode the driver takes a core of a worker. With one worker the driver
    /// gets all of its cores and runs the tasks itself (Spark's local mode inside the driver,
    /// one task thread per core): on a 2-core worker that is 2 task slots instead of 1 executor
    /// core, and no executor JVM to start. With several workers the driver takes one core and
    /// executors of one core each take the rest.
    pub fn from_master(master: &spark::MasterState) -> Result<Self> {
        let alive: Vec<_> = master
            .workers
            .iter()
            .filter(|w| w.state == crate::clients::spark::WorkerState::Alive)
            .collect();
        let total: u32 = alive.iter().map(|w| w.cores).sum();
        if total < 2 {
            bail!("the Spark cluster has {total} core(s) but the export needs 2; add workers or cores");
        }
        let free: u32 = alive.iter().map(|w| w.cores.saturating_sub(w.coresused)).sum();
        let (cores, memory_mb): (u32, u64) = if free >= 2 {
            (free, alive.iter().map(|w| w.memory.saturating_sub(w.memoryused)).sum())
        } else {
            (total, alive.iter().map(|w| w.memory).sum())
        };
        if alive.len() == 1 {
            let driver_memory_mb = memory_mb.saturating_sub(512).clamp(512, 1536);
            return Ok(Self {
                executors: 0,
                executor_cores: 0,
                executor_memory_mb: 0,
                driver_cores: cores,
                driver_memory_mb,
                task_slots: cores,
            });
        }
        let executors = cores - 1;
        let per_executor = ((memory_mb.saturating_sub(512)) / executors as u64).clamp(512, 1024);
        Ok(Self {
            executors,
            executor_cores: 1,
            executor_memory_mb: per_executor,
            driver_cores: 1,
            driver_memory_mb: 512,
            task_slots: executors,
        })
    }

    /// The submission's sizing properties; `driver_archive` false leaves out the class-data
    /// archive (the benchmark's baseline for it).
    pub fn properties(&self, driver_archive: bool) -> Vec<(String, String)> {
        let driver_options = if driver_archive { driver_jvm_options() } else { JVM_OPTIONS.into() };
        let mut p = vec![
            ("spark.driver.cores".to_string(), self.driver_cores.to_string()),
            ("spark.driver.memory".into(), format!("{}m", self.driver_memory_mb)),
            ("spark.driver.extraJavaOptions".into(), driver_options),
        ];
        if self.executors == 0 {
            // read by the job: run the tasks in the driver with this many threads
            p.push(("spark.labctl.driverTaskThreads".into(), self.task_slots.to_string()));
        } else {
            p.extend([
                ("spark.executor.cores".to_string(), self.executor_cores.to_string()),
                ("spark.cores.max".into(), (self.executors * self.executor_cores).to_string()),
                ("spark.executor.memory".into(), format!("{}m", self.executor_memory_mb)),
                ("spark.executor.extraJavaOptions".into(), JVM_OPTIONS.into()),
            ]);
        }
        p
    }

    /// e.g. "tasks in the driver: 2 cores (2 task slots), 1536 MiB" or
    /// "3 executors x 1 core, 1024 MiB; driver 1 core, 512 MiB"
    pub fn describe(&self) -> String {
        if self.executors == 0 {
            return format!(
                "no executors, tasks in the driver: {} cores ({} task slots), {} MiB",
                self.driver_cores, self.task_slots, self.driver_memory_mb
            );
        }
        format!(
            "{} executor{} x {} core{}, {} MiB; driver {} core, {} MiB",
            self.executors,
            if self.executors == 1 { "" } else { "s" },
            self.executor_cores,
            if self.executor_cores == 1 { "" } else { "s" },
            self.executor_memory_mb,
            self.driver_cores,
            self.driver_memory_mb
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(workers: &[(u32, u32, u64)]) -> spark::MasterState {
        spark::MasterState {
            url: String::new(),
            status: "ALIVE".into(),
            workers: workers
                .iter()
                .enumerate()
                .map(|(i, &(cores, coresused, memory))| spark::Worker {
                    id: format!("w{i}"),
                    host: String::new(),
                    state: "ALIVE".into(),
                    cores,
                    coresused,
                    memory,
                    memoryused: 0,
                })
                .collect(),
            cores: 0,
            coresused: 0,
            activedrivers: vec![],
            completeddrivers: vec![],
        }
    }

    #[test]
    fn sizing() {
        // One 2-core worker: the driver gets both cores and runs the tasks itself.
        let s = Sizing::from_master(&master(&[(2, 0, 2048)])).unwrap();
        assert_eq!(
            (s.executors, s.driver_cores, s.task_slots, s.driver_memory_mb),
            (0, 2, 2, 1536)
        );
        let props = s.properties(true);
        assert!(props.contains(&("spark.labctl.driverTaskThreads".into(), "2".into())));
        assert!(!props.iter().any(|(k, _)| k == "spark.cores.max"));
        // Two workers: the driver takes one core, executors of one core the rest.
        let s = Sizing::from_master(&master(&[(2, 0, 2048), (2, 0, 2048)])).unwrap();
        assert_eq!((s.executors, s.driver_cores, s.task_slots), (3, 1, 3));
        assert!(s.properties(true).contains(&("spark.cores.max".into(), "3".into())));
        // Busy cores are not counted while 2 are free ...
        let s = Sizing::from_master(&master(&[(2, 1, 2048), (2, 0, 2048)])).unwrap();
        assert_eq!(s.executors, 2);
        // ... and when fewer are free, the submission is sized for the cluster and queues.
        let s = Sizing::from_master(&master(&[(2, 2, 2048)])).unwrap();
        assert_eq!(s.task_slots, 2);
        assert!(Sizing::from_master(&master(&[(1, 0, 2048)])).is_err());
    }

    #[test]
    fn the_driver_maps_the_archive_the_image_makes() {
        let dockerfile = include_str!("../../../docker/spark/Dockerfile");
        let archive = crate::stack::SPARK_DRIVER_ARCHIVE;
        assert!(dockerfile.contains(&format!("jsa={archive}")), "the Dockerfile makes {archive}");
        let s = Sizing::from_master(&master(&[(2, 0, 2048)])).unwrap();
        let props = s.properties(true);
        let driver = props.iter().find(|(k, _)| k == "spark.driver.extraJavaOptions").unwrap();
        assert!(driver.1.contains(&format!("-XX:SharedArchiveFile={archive}")), "{driver:?}");
        assert!(driver.1.contains("-XX:+UseSerialGC"), "the collector the archive was made with");
        let without = s.properties(false);
        assert!(!without.iter().any(|(_, v)| v.contains("SharedArchiveFile")), "{without:?}");
    }
}
