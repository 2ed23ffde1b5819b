//! Rebuild graft when the UI's page files change: `src/ui/assets.rs` compiles
//! them into the binary, and cargo does not track a macro's input files.

fn main() {
    println!("cargo:rerun-if-changed=src/ui/assets");
}
