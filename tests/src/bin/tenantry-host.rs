//! The `tenantry` CLI, built inside the test package so end-to-end tests can
//! spawn the real host as a separate process. Identical to `host/src/main.rs`.

fn main() -> std::process::ExitCode {
    tenantry::cli::main()
}
