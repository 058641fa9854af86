//! The `tenantry` operator binary. All logic lives in the library's [`tenantry::cli`].

fn main() -> std::process::ExitCode {
    tenantry::cli::main()
}
