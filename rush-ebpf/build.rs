//! Compiles the C BPF programs in src/bpf/ with clang and generates a libbpf-rs skeleton
//! for each: `$OUT_DIR/<name>.bpf.o` and `$OUT_DIR/<name>.skel.rs`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// One object per hook family; they share maps by pinning (see src/bpf/rush.h).
const OBJECTS: &[&str] = &["net", "file", "guard"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let bpf_dir = manifest_dir.join("src/bpf");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = find_clang();
    for name in OBJECTS {
        let src = bpf_dir.join(format!("{name}.bpf.c"));
        let obj = out_dir.join(format!("{name}.bpf.o"));
        let skel = out_dir.join(format!("{name}.skel.rs"));
        if let Err(e) = SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .reference_obj(true)
            .clang(&clang)
            .clang_args([
                "-Wall".as_ref(),
                "-Wno-unused-function".as_ref(),
                "-I".as_ref(),
                bpf_dir.as_os_str(),
            ])
            .build_and_generate(&skel)
        {
            panic!("building BPF object {}: {e:#}", src.display());
        }
    }
}

/// `$CLANG`, else `clang`, else the newest versioned `clang-N` on PATH.
fn find_clang() -> PathBuf {
    if let Some(clang) = env::var_os("CLANG") {
        let clang = PathBuf::from(clang);
        if !runs(&clang) {
            panic!("CLANG={} does not run (`{0} --version` failed)", clang.display());
        }
        return clang;
    }
    let candidates =
        std::iter::once("clang".to_string()).chain((14..=22).rev().map(|v| format!("clang-{v}")));
    for name in candidates {
        if runs(Path::new(&name)) {
            return PathBuf::from(name);
        }
    }
    panic!(
        "no clang found to compile the BPF programs: install clang (e.g. `apt-get install clang-19 \
         libbpf-dev libelf-dev zlib1g-dev`) or set CLANG=/path/to/clang"
    );
}

fn runs(clang: &Path) -> bool {
    Command::new(clang).arg("--version").output().is_ok_and(|o| o.status.success())
}
