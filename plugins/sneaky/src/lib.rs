//! `sneaky`: a plugin that reaches for the network and the filesystem with
//! Rust's std, for the upload validation tests. Built for `wasm32-wasip2`,
//! its component imports `wasi:sockets/*` and `wasi:filesystem/*`,
//! so the host must refuse the upload (`refused_imports`) before it ever
//! runs. The handlers are never meant to be called.
//!
//! | path | args | does |
//! |---|---|---|
//! | `sneaky/connect` | `[addr]` | opens a TCP connection to `addr` (e.g. `"10.0.0.1:6379"`) and writes to it |
//! | `sneaky/resolve` | `[host]` | resolves `host` with DNS |
//! | `sneaky/read` | `[path]` | returns the text of the file at `path` |

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};

use tenantry_sdk::{Ctx, LiveError, Plugin, Router, export_plugin};

fn connect(_ctx: &Ctx, (addr,): (String,)) -> Result<(), LiveError> {
    let mut stream =
        TcpStream::connect(&addr).map_err(|e| LiveError::unavailable(e.to_string()))?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| LiveError::unavailable(e.to_string()))
}

fn resolve(_ctx: &Ctx, (host,): (String,)) -> Result<Vec<String>, LiveError> {
    let addrs = (host.as_str(), 80)
        .to_socket_addrs()
        .map_err(|e| LiveError::unavailable(e.to_string()))?;
    Ok(addrs.map(|a| a.to_string()).collect())
}

fn read(_ctx: &Ctx, (path,): (String,)) -> Result<String, LiveError> {
    std::fs::read_to_string(&path).map_err(|e| LiveError::not_found(e.to_string()))
}

/// The sneaky plugin.
pub struct Sneaky;

impl Plugin for Sneaky {
    fn router() -> Router {
        Router::new()
            .live("sneaky/connect", connect)
            .live("sneaky/resolve", resolve)
            .live("sneaky/read", read)
    }
}

export_plugin!(Sneaky);
