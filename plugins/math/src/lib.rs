//! Example plugin `math` (world `weft:math/math`): integers, floats, a
//! `result` and a record.

wit_bindgen::generate!({
    world: "math",
    path: "../../wit/examples/math.wit",
});

struct Math;

impl Guest for Math {
    /// Wraps on overflow: the signature has no error case, and two's
    /// complement wrap-around is what `s64` addition means in most languages.
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    fn divide(a: f64, b: f64) -> Result<f64, String> {
        if b == 0.0 {
            return Err("division by zero".to_string());
        }
        Ok(a / b)
    }

    fn stats(xs: Vec<f64>) -> Summary {
        if xs.is_empty() {
            return Summary { count: 0, mean: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        let sum: f64 = xs.iter().sum();
        Summary {
            // A list of more than u32::MAX f64s does not fit in a wasm32 memory.
            count: u32::try_from(xs.len()).unwrap_or(u32::MAX),
            mean: sum / xs.len() as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

export!(Math);
