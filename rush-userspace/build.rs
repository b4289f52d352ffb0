//! Links `rush` as a position-dependent executable. A shell starts for every `-c`, every
//! script and every `$SHELL` spawn; as PIE, ld.so applies ~27,000 relative relocations at
//! each start, copying-on-write every page they touch (about a third of `rush -c true`'s
//! CPU time). Position-dependent, those addresses are final at link time. The cost: the
//! executable's own text is not randomized (its libraries and heap still are).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
