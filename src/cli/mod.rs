//! Command line: parse arguments, call the library, render output.
pub fn main() -> i32 {
    0
}
