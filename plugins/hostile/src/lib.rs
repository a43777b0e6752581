//! Plugin `hostile` (world `weft:hostile/hostile`): misbehaves on purpose so
//! tests can prove the sandbox holds (deadlines, memory limits, no ambient
//! filesystem or environment, stack overflow, result size caps, results
//! that alias guest memory). Not loaded by default; never deploy it.
//!
//! `std::hint::black_box` keeps the optimiser from removing the misbehaviour.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::Write;

wit_bindgen::generate!({
    world: "weft:hostile/hostile",
    path: [
        "../../wit/examples/hostile-deps/random.wit",
        "../../wit/examples/hostile-deps/io.wit",
        "../../wit/examples/hostile.wit",
    ],
    with: { "wasi:random/random@0.2.0": generate, "wasi:io/poll@0.2.0": generate },
});

const MIB: usize = 1 << 20;
/// Host page size: writing one byte per page makes the host commit the memory.
const PAGE: usize = 4096;
struct Hostile;

thread_local! {
    /// What `snoop` was last given; lives as long as the instance.
    static KEPT: RefCell<Option<String>> = const { RefCell::new(None) };
}

impl Guest for Hostile {
    fn spin() {
        let mut i = 0u64;
        loop {
            i = black_box(i.wrapping_add(1));
        }
    }

    fn hog(mib: u32) -> u32 {
        // Grown one push at a time (no `with_capacity`), so a huge `mib` fails
        // by running into the memory limit, not by a capacity overflow.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for _ in 0..mib {
            let mut chunk = vec![0u8; MIB];
            for offset in (0..MIB).step_by(PAGE) {
                chunk[offset] = 1;
            }
            chunks.push(black_box(chunk));
        }
        black_box(&chunks);
        mib
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|err| format!("{path}: {err}"))
    }

    fn env_var(name: String) -> Option<String> {
        std::env::var(name).ok()
    }

    fn recurse(depth: u32) -> u32 {
        descend(depth)
    }

    fn big_output(mib: u32) -> String {
        // Saturating: an impossible size fails the allocation (a trap), it
        // does not wrap around to a small string.
        "x".repeat((mib as usize).saturating_mul(MIB))
    }

    fn big_error(mib: u32) -> Result<(), String> {
        Err(Self::big_output(mib))
    }

    fn alias_bomb(count: u32, mib: u32) -> Vec<String> {
        let shared = std::mem::ManuallyDrop::new("x".repeat((mib as usize).saturating_mul(MIB)));
        let (ptr, len) = (shared.as_ptr().cast_mut(), shared.len());
        // Deliberately unsound: every entry claims the same buffer, which is
        // exactly the shape of result a hostile guest can hand the host. The
        // host must refuse to copy it before the (double-freeing) post-return.
        (0..count).map(|_| unsafe { String::from_raw_parts(ptr, len, len) }).collect()
    }

    fn flag_bomb(count: u32) -> Vec<Letters> {
        vec![Letters::all(); count as usize]
    }

    fn snoop(value: String) -> Option<String> {
        KEPT.with(|kept| kept.replace(Some(value)))
    }

    fn bad_char() -> char {
        // Deliberately invalid: the canonical ABI passes it as a plain u32,
        // and the host must refuse to read it, not trust it.
        unsafe { char::from_u32_unchecked(black_box(0xD800)) }
    }

    fn is_ready(p: &wasi::io::poll::Pollable) -> bool {
        p.ready()
    }

    fn random_bytes(len: u64) -> u64 {
        wasi::random::random::get_random_bytes(len).len() as u64
    }

    fn quit(status: u32) {
        std::process::exit(status as i32);
    }

    fn shout(text: String, times: u32) {
        weft_guest::log::info(&text);
        let mut out = std::io::stdout().lock();
        for _ in 0..times {
            let _ = out.write_all(text.as_bytes());
        }
        let _ = out.flush();
    }
}

/// Non-tail recursion that lives on the wasm call stack: only the depth
/// passes through `black_box` (a few bytes of the guest's in-memory stack per
/// frame), so the engine's `max_wasm_stack` overflows long before Rust's
/// 1 MiB shadow stack does, and the host sees a `stack_overflow` trap.
#[inline(never)]
fn descend(depth: u32) -> u32 {
    let depth = black_box(depth);
    if depth == 0 {
        return 0;
    }
    descend(depth - 1).wrapping_mul(black_box(1)) + 1
}

export!(Hostile);
