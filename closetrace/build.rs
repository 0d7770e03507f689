//! Builds the eBPF object from `closetrace-ebpf` and leaves it in OUT_DIR for
//! `include_bytes!`. Building it here, rather than embedding a file that
//! `cargo xtask build-ebpf` left behind, means a plain build can never embed a
//! stale object: cargo reruns this whenever the eBPF or common crate changes.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).parent().expect("workspace root");
    let ebpf_dir = root.join("closetrace-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    // The common crate is compiled into the object too.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("closetrace-common/src").display()
    );
    let package = aya_build::Package {
        name: "closetrace-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
