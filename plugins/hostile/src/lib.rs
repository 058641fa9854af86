//! `hostile`: a plugin that attacks its host, for the sandbox and isolation
//! tests. Apart from `hostile/echo`, every handler misbehaves in one way that
//! the host must contain (stop it, refuse it or rate-limit it) without another
//! call, connection or tenant noticing. The handlers are a test contract:
//! change them only together with the tests that call them.
//!
//! | path | args | does |
//! |---|---|---|
//! | `hostile/echo` | `[x]` | returns `x` (a normal call, to check the host still serves) |
//! | `hostile/spin` | `[]` | loops forever (the CPU deadline must stop it) |
//! | `hostile/alloc` | `[]` | allocates without bound, 1 MiB chunks each written (the memory cap must stop it) |
//! | `hostile/recurse` | `[]` | recurses without bound on the wasm stack (the max wasm stack must stop it) |
//! | `hostile/panic` | `[]` | panics (clients must see `INTERNAL_ERROR`, not the message) |
//! | `hostile/huge` | `[bytes]`, `[null]` or `[]` | returns a JSON string of `bytes` `x` characters (default 104857600, 100 MiB), so the result is `bytes + 2` bytes of JSON |
//! | `hostile/publish_flood` | `[]` | publishes `{"n":i}` on topic `flood`, event `tick`, in a tight loop until the host refuses, then returns that error (`?` mapping); never stops otherwise |
//! | `hostile/kv_flood` | `[]` | sets `flood:{i}` to a 1 KiB string in a tight loop until the host refuses, then returns that error (`?` mapping); never stops otherwise |
//! | `hostile/log_flood` | `[]` | logs a ~100-byte line at info and writes it to stdout, in a tight loop, forever (the host rate-limits both; the CPU deadline ends the call) |
//!
//! `authenticate`: the user is `?user=NAME`, or anonymous without it; nobody
//! is refused. The subscribe gate allows every topic.

use std::hint::black_box;
use std::io::Write;

use tenantry_sdk::serde_json::{Value, json};
use tenantry_sdk::{
    ConnectRequest, Ctx, LiveError, Plugin, Router, User, ValidationIssue, export_plugin,
};

/// The panic message; tests check that clients never see it.
pub const PANIC_MESSAGE: &str = "hostile panic: this message must not reach the client";

/// Default size of `hostile/huge`'s string: 100 MiB.
pub const HUGE_DEFAULT_BYTES: u64 = 100 << 20;

/// Size of each value `hostile/kv_flood` stores.
const KV_FLOOD_VALUE_BYTES: usize = 1024;

/// Length of each line `hostile/log_flood` writes.
const LOG_FLOOD_LINE_BYTES: usize = 100;

fn echo(_ctx: &Ctx, (x,): (Value,)) -> Result<Value, LiveError> {
    Ok(x)
}

fn spin(_ctx: &Ctx, (): ()) -> Result<(), LiveError> {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

fn alloc(_ctx: &Ctx, (): ()) -> Result<usize, LiveError> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        // 1 MiB at a time, each written so the pages are really used.
        chunks.push(black_box(vec![1u8; 1 << 20]));
        black_box(&chunks);
    }
}

/// One level of `hostile/recurse`. It is never inlined, its frame holds a
/// small array whose address escapes (`black_box`) and that is read again
/// after the recursive call, and the call's result goes through `black_box`
/// before it is combined with that array: the call is never in tail
/// position, so the optimiser can neither make it a loop (tail-recursion
/// elimination, even with an accumulator) nor a tail call, and every level
/// is a real wasm call frame. The base case exists only so the function is
/// not provably non-returning; `black_box` hides that it is never taken.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    let depth = black_box(depth);
    if depth == u64::MAX {
        return 0;
    }
    let frame = [depth, depth ^ 0x5a5a];
    black_box(&frame);
    let below = black_box(descend(depth + 1));
    below.wrapping_add(frame[(depth & 1) as usize])
}

fn recurse(_ctx: &Ctx, (): ()) -> Result<u64, LiveError> {
    Ok(descend(black_box(0)))
}

fn panic(_ctx: &Ctx, (): ()) -> Result<(), LiveError> {
    panic!("{PANIC_MESSAGE}")
}

/// `[bytes]`, `[null]` or `[]`. The SDK decodes `[]` as `null` only when the
/// whole argument type accepts `null`, which a tuple does not, hence the
/// outer `Option`.
fn huge(_ctx: &Ctx, args: Option<(Option<u64>,)>) -> Result<String, LiveError> {
    let bytes = args
        .and_then(|(bytes,)| bytes)
        .unwrap_or(HUGE_DEFAULT_BYTES);
    let Ok(bytes) = usize::try_from(bytes) else {
        return Err(LiveError::validation(vec![ValidationIssue::new(
            "args[0]",
            "bytes does not fit in this platform's address space",
        )]));
    };
    Ok("x".repeat(bytes))
}

fn publish_flood(ctx: &Ctx, (): ()) -> Result<(), LiveError> {
    let mut i: u64 = 0;
    loop {
        ctx.publish("flood", "tick", &json!({ "n": i }))?;
        i = i.wrapping_add(1);
    }
}

fn kv_flood(ctx: &Ctx, (): ()) -> Result<(), LiveError> {
    let value = "v".repeat(KV_FLOOD_VALUE_BYTES);
    let kv = ctx.kv();
    let mut i: u64 = 0;
    loop {
        kv.set(&format!("flood:{i}"), &value, None)?;
        i = i.wrapping_add(1);
    }
}

/// The `i`th line of `hostile/log_flood`: exactly
/// [`LOG_FLOOD_LINE_BYTES`] bytes.
fn log_flood_line(i: u64) -> String {
    let mut line = format!("hostile log flood line {i:020} ");
    let pad = LOG_FLOOD_LINE_BYTES.saturating_sub(line.len());
    line.push_str(&".".repeat(pad));
    line
}

fn log_flood(_ctx: &Ctx, (): ()) -> Result<(), LiveError> {
    let mut i: u64 = 0;
    loop {
        let line = log_flood_line(i);
        tenantry_sdk::log::info(&line);
        // Not `println!`: it panics if stdout is closed, and this must go on.
        let _ = writeln!(std::io::stdout(), "{line}");
        i = i.wrapping_add(1);
    }
}

/// The hostile plugin.
pub struct Hostile;

impl Plugin for Hostile {
    fn router() -> Router {
        Router::new()
            .live("hostile/echo", echo)
            .live("hostile/spin", spin)
            .live("hostile/alloc", alloc)
            .live("hostile/recurse", recurse)
            .live("hostile/panic", panic)
            .live("hostile/huge", huge)
            .live("hostile/publish_flood", publish_flood)
            .live("hostile/kv_flood", kv_flood)
            .live("hostile/log_flood", log_flood)
    }

    fn authenticate(request: &ConnectRequest) -> Result<Option<User>, LiveError> {
        Ok(request.query("user").map(User::new))
    }

    fn authorize_subscribe(_ctx: &Ctx, _topic: &str) -> Result<(), LiveError> {
        Ok(())
    }
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use tenantry_sdk::testing;

    fn call(path: &str, args: &str) -> Result<String, LiveError> {
        Hostile::router().call(&testing::ctx(Some("ann")), path, args)
    }

    #[test]
    fn echo_returns_its_argument() {
        assert_eq!(
            call("hostile/echo", r#"[{"a":[1,"b",null]}]"#).unwrap(),
            r#"{"a":[1,"b",null]}"#
        );
        assert_eq!(call("hostile/echo", "[]").unwrap_err().code, "VALIDATION");
    }

    #[test]
    fn huge_returns_a_string_of_the_requested_size() {
        assert_eq!(call("hostile/huge", "[0]").unwrap(), r#""""#);
        assert_eq!(call("hostile/huge", "[5]").unwrap(), r#""xxxxx""#);
        let out = call("hostile/huge", "[1000]").unwrap();
        assert_eq!(out.len(), 1002);
        assert!(out.trim_matches('"').bytes().all(|b| b == b'x'));
        for bad in [r#"["x"]"#, "[-1]", "[1,2]"] {
            assert_eq!(call("hostile/huge", bad).unwrap_err().code, "VALIDATION");
        }
    }

    #[test]
    fn huge_defaults_to_100_mib() {
        for args in ["[]", "[null]"] {
            let out = call("hostile/huge", args).unwrap();
            assert_eq!(out.len() as u64, HUGE_DEFAULT_BYTES + 2, "{args}");
        }
    }

    #[test]
    #[should_panic(expected = "must not reach the client")]
    fn panic_panics() {
        let _ = call("hostile/panic", "[]");
    }

    #[test]
    fn log_flood_lines_are_100_bytes() {
        assert_eq!(log_flood_line(0).len(), LOG_FLOOD_LINE_BYTES);
        assert_eq!(log_flood_line(u64::MAX).len(), LOG_FLOOD_LINE_BYTES);
    }

    #[test]
    fn paths_are_the_contract() {
        let router = Hostile::router();
        let paths: Vec<&str> = router.paths().collect();
        assert_eq!(
            paths,
            [
                "hostile/echo",
                "hostile/spin",
                "hostile/alloc",
                "hostile/recurse",
                "hostile/panic",
                "hostile/huge",
                "hostile/publish_flood",
                "hostile/kv_flood",
                "hostile/log_flood",
            ]
        );
    }

    #[test]
    fn authenticate_and_gate() {
        let req = |q: &[(&str, &str)]| ConnectRequest {
            query: q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ConnectRequest::default()
        };
        assert_eq!(Hostile::authenticate(&req(&[])).unwrap(), None);
        assert_eq!(
            Hostile::authenticate(&req(&[("user", "bob")]))
                .unwrap()
                .map(|u| u.id),
            Some("bob".to_owned())
        );
        assert_eq!(
            Hostile::authenticate(&req(&[("deny", "forbidden")])).unwrap(),
            None
        );
        let ctx = testing::ctx(None);
        for topic in ["anything", "denied:x", "flood"] {
            assert!(Hostile::authorize_subscribe(&ctx, topic).is_ok());
        }
    }
}
