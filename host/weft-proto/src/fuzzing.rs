//! Mutation fuzzing for decoders, on stable Rust: proptest makes byte
//! strings by editing valid frames (flip, insert, delete, duplicate,
//! truncate), so most inputs get past the JSON parser and into the shape
//! checks behind it, which random bytes almost never reach. Cases run in
//! CI; raise `PROPTEST_CASES` for a longer hunt. (Coverage-guided fuzzing
//! with cargo-fuzz needs a nightly toolchain.)

use proptest::prelude::*;

/// Cases per fuzz test: `PROPTEST_CASES` when set, else 2,000 (what CI runs).
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// One edit of a byte string; positions wrap around its length.
#[derive(Clone, Debug)]
pub enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to JSON, then any byte.
    let byte = prop_oneof![prop::sample::select(b"{}[]\",:\\0-9aeflnrstu $".to_vec()), any::<u8>()];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 1..32usize).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Applies `edits` to `bytes`.
pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match *e {
            Edit::Flip(i, b) if len > 0 => bytes[at(i)] = b,
            Edit::Insert(i, b) => bytes.insert(if len == 0 { 0 } else { i % (len + 1) }, b),
            Edit::Delete(i, n) if len > 0 => {
                let start = at(i);
                bytes.drain(start..(start + n).min(len));
            }
            Edit::Duplicate(i, n) if len > 0 => {
                let start = at(i);
                let copy = bytes[start..(start + n).min(len)].to_vec();
                bytes.splice(start..start, copy);
            }
            Edit::Truncate(i) => bytes.truncate(if len == 0 { 0 } else { i % (len + 1) }),
            _ => {}
        }
    }
    bytes
}

/// One of `seeds` after up to eight edits.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(seeds), prop::collection::vec(edit(), 0..8)).prop_map(|(seed, edits)| apply(seed, &edits))
}
