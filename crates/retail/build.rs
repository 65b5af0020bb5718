//! Rebuilds the crate when a file under migrations/retail changes: the migrations are
//! embedded at compile time, and cargo does not watch that folder by itself.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/retail");
}
