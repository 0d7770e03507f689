use which::which;

/// Rebuild when bpf-linker changes (for example after `scripts/bootstrap`
/// relinks it against a new toolchain's LLVM).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
