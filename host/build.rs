//! Builds the example plugins (`plugins/`, its own cargo workspace) for
//! `wasm32-wasip2` in release mode, so the host can embed `chat.wasm` and the
//! tests can load `fixture.wasm`. No manual step: a fresh clone with only
//! rustup builds everything.
//!
//! The nested cargo uses its own target dir (`plugins/target`; the outer
//! build holds the lock on the outer one) and an environment cleaned of
//! everything the outer cargo set for this build script. The directory of the
//! built `.wasm` files is exported to the crate as `TENANTRY_GUEST_DIR`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The guest target.
const TARGET: &str = "wasm32-wasip2";
/// The plugins every host build needs (`bundled::CHAT_WASM` embeds `chat`).
const REQUIRED: &[&str] = &["chat", "fixture", "hostile", "sneaky", "orders"];

/// Variables the outer cargo sets for (or passes through to) this build
/// script that must not leak into the nested build: they describe the outer
/// build (target, profile, flags, wrappers such as clippy-driver).
const REMOVE: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "DEP_INFO",
];

/// `CARGO_*` variables that are user configuration (where the registry is,
/// network settings) or the shared jobserver, and so are kept.
const KEEP_PREFIXES: &[&str] = &[
    "CARGO_HOME",
    "CARGO_MAKEFLAGS",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\nerror: tenantry build script: {message}\n");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let host_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let root = host_dir
        .parent()
        .ok_or("host/ has no parent directory")?
        .to_path_buf();
    let plugins = root.join("plugins");
    let manifest = plugins.join("Cargo.toml");
    let target_dir = plugins.join("target");
    let out_dir = target_dir.join(TARGET).join("release");

    println!(
        "cargo:rerun-if-changed={}",
        stamp_path(&target_dir).display()
    );
    rerun_if_changed(&root, &plugins)
        .map_err(|e| format!("cannot list {}: {e}", plugins.display()))?;
    ensure_target()?;

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&plugins)
        // Cargo parses build-script stdout: the child must write to stderr.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit());
    clean_env(&mut cmd);

    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "building the plugins failed ({status}). Reproduce with:\n  \
             cargo build --release --target {TARGET} --manifest-path plugins/Cargo.toml"
        ));
    }
    for name in REQUIRED {
        let wasm = out_dir.join(format!("{name}.wasm"));
        if !wasm.is_file() {
            return Err(format!(
                "the plugin build did not produce {}",
                wasm.display()
            ));
        }
    }
    write_stamp(&target_dir).map_err(|e| format!("cannot write the build stamp: {e}"))?;
    println!("cargo:rustc-env=TENANTRY_GUEST_DIR={}", out_dir.display());
    Ok(())
}

/// The stamp file that makes cargo rerun this script when `plugins/target`
/// is deleted (e.g. `cargo clean --manifest-path plugins/Cargo.toml`).
fn stamp_path(target_dir: &Path) -> PathBuf {
    target_dir.join(".tenantry-host-build-stamp")
}

/// Write the stamp with an mtime far in the past: cargo reruns a build
/// script when a `rerun-if-changed` path is newer than the script's last run
/// or missing, and only "missing" should trigger here.
fn write_stamp(target_dir: &Path) -> io::Result<()> {
    let path = stamp_path(target_dir);
    let file = fs::File::create(&path)?;
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1))?;
    Ok(())
}

/// Remove the outer build's variables from `cmd`'s environment.
fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO_") || key.starts_with("__CARGO");
        let keep = KEEP_PREFIXES.iter().any(|p| key.starts_with(p));
        if REMOVE.contains(&key) || (cargo_var && !keep) {
            cmd.env_remove(key);
        }
    }
}

/// Install the wasm32-wasip2 target with rustup if the toolchain lacks it.
fn ensure_target() -> Result<(), String> {
    if target_installed() {
        return Ok(());
    }
    println!("cargo:warning=installing the {TARGET} target with `rustup target add {TARGET}`");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() && target_installed() => Ok(()),
        Ok(s) => Err(format!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed ({s}). \
             Install it yourself with `rustup target add {TARGET}` and build again."
        )),
        Err(e) => Err(format!(
            "the {TARGET} target is missing and rustup could not be run ({e}). \
             Install the target for this toolchain (`rustup target add {TARGET}`) and build again."
        )),
    }
}

/// Whether the toolchain building us has the standard library for TARGET.
fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // The directory holds libstd-*.rlib once the target is installed.
            fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                })
                .unwrap_or(false)
        }
        _ => false,
    }
}

/// Rebuild the plugins when their sources, the SDK or the WIT change (never
/// for `plugins/target`, which the nested build itself writes).
fn rerun_if_changed(root: &Path, plugins: &Path) -> io::Result<()> {
    let mut paths = vec![
        root.join("Cargo.toml"),
        root.join("guest-sdk"),
        root.join("wit"),
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
    ];
    for entry in fs::read_dir(plugins)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_dir()
            && name != "target"
            && !name.to_string_lossy().starts_with('.')
        {
            paths.push(entry.path());
        }
    }
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Ok(())
}
