//! Plugin `stall` (world `weft:stall/stall`): the component's start-up,
//! `_initialize`, which runs whenever an instance is made, sleeps for ever:
//! a wait inside a host call (a WASI clock), which the epoch deadline cannot
//! interrupt. Tests prove that no instantiation, for a call or for a spare,
//! waits on it for longer than the plugin's deadline. Never deploy it.

wit_bindgen::generate!({
    world: "stall",
    path: "../../wit/examples/stall.wit",
});

#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    std::thread::sleep(std::time::Duration::MAX);
}

struct Stall;

impl Guest for Stall {
    fn ready() -> String {
        "ready".into()
    }
}

export!(Stall);
