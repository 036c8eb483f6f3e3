//! labctl: stands up the IIoT streaming lab (broker, TimescaleDB, Flink, Spark, Azurite) on a
//! Docker engine, feeds it, runs its jobs and shows where everything stands.

fn main() -> std::process::ExitCode {
    labctl::cli::main()
}
