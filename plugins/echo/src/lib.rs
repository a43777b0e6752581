//! Example plugin `echo` (world `weft:echo/echo`): hands strings back.
//!
//! `echo` also logs through the host's `weft:host/log` interface (via
//! weft-guest), so this component is the one that exercises host imports.

wit_bindgen::generate!({
    world: "echo",
    path: "../../wit/examples/echo.wit",
});

struct Echo;

impl Guest for Echo {
    fn echo(value: String) -> String {
        weft_guest::log::debug(&format!("echo: {} bytes", value.len()));
        value
    }

    fn echos(values: Vec<String>) -> Vec<String> {
        values
    }

    fn concat(a: String, b: String) -> String {
        a + &b
    }
}

export!(Echo);
