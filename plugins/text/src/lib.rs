//! Example plugin `text` (world `weft:text/text`): string processing.

wit_bindgen::generate!({
    world: "text",
    path: "../../wit/examples/text.wit",
});

struct Text;

impl Guest for Text {
    fn word_count(text: String) -> u32 {
        // A string of more than u32::MAX words does not fit in a wasm32 memory.
        u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
    }

    fn upper(text: String) -> String {
        text.to_uppercase()
    }

    fn split(text: String, sep: String) -> Vec<String> {
        if sep.is_empty() {
            text.chars().map(String::from).collect()
        } else {
            text.split(sep.as_str()).map(String::from).collect()
        }
    }
}

export!(Text);
