//! Builds the eBPF object from `closetrace-ebpf` and leaves it in OUT_DIR for
//! `include_bytes!`. Building it here, rather than embedding a file that
//! `cargo xtask build-ebpf` left behind, means a plain build can never embed a
//! stale object: cargo reruns this whenever the eBPF or common crate changes.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    // The fuzz targets build this crate with sanitizer flags that the BPF
    // target cannot take, and never load programs: embed an empty object.
    println!("cargo:rerun-if-env-changed=CLOSETRACE_NO_EBPF");
    if std::env::var_os("CLOSETRACE_NO_EBPF").is_some() {
        let out = std::env::var("OUT_DIR")?;
        std::fs::write(Path::new(&out).join("closetrace"), [])?;
        return Ok(());
    }
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
