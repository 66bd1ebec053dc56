//! The `motey` command.
fn main() {}
