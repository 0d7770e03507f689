//! `cargo xtask deb`: closetrace's Debian package, built with dpkg-deb
//! from a staged tree. dpkg-deb is Debian's own packer and is on every
//! Debian machine, so nothing needs installing or compiling (cargo-deb
//! would be a crate to build in CI), and the tree says plainly what the
//! package holds:
//!
//!   /usr/sbin/closetrace                      the release binary (eBPF inside)
//!   /lib/systemd/system/closetrace.service    installed disabled
//!   /etc/default/closetrace                   its options (a conffile)
//!   /usr/share/man/man8/closetrace.8.gz, shell completions,
//!   /usr/share/closetrace/prometheus/         alert rules and their tests
//!
//! Never the test tools (closetrace-peer, closetrace-churn).
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The kernel the package needs, said in its metadata and description.
const KERNEL_NEEDED: &str = "Linux >= 5.10 with BTF (CONFIG_DEBUG_INFO_BTF=y)";

/// (source under the workspace, path in the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/closetrace", "usr/sbin/closetrace", 0o755),
    (
        "deploy/systemd/closetrace.service",
        "lib/systemd/system/closetrace.service",
        0o644,
    ),
    ("deploy/debian/default", "etc/default/closetrace", 0o644),
    (
        "deploy/completions/closetrace.bash",
        "usr/share/bash-completion/completions/closetrace",
        0o644,
    ),
    (
        "deploy/completions/_closetrace",
        "usr/share/zsh/vendor-completions/_closetrace",
        0o644,
    ),
    (
        "deploy/completions/closetrace.fish",
        "usr/share/fish/vendor_completions.d/closetrace.fish",
        0o644,
    ),
    (
        "deploy/prometheus/closetrace.rules.yml",
        "usr/share/closetrace/prometheus/closetrace.rules.yml",
        0o644,
    ),
    (
        "deploy/prometheus/closetrace.rules.test.yml",
        "usr/share/closetrace/prometheus/closetrace.rules.test.yml",
        0o644,
    ),
    (
        "docs/runbook.md",
        "usr/share/doc/closetrace/runbook.md",
        0o644,
    ),
    (
        "deploy/debian/copyright",
        "usr/share/doc/closetrace/copyright",
        0o644,
    ),
    ("deploy/debian/postinst", "DEBIAN/postinst", 0o755),
    ("deploy/debian/prerm", "DEBIAN/prerm", 0o755),
    ("deploy/debian/postrm", "DEBIAN/postrm", 0o755),
];

/// Build the package from the release binary already built; its path.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let binary = root.join("target/release/closetrace");
    let version = version_of(&binary)?;
    let out_dir = root.join("target/deb");
    let tree = out_dir.join(format!("closetrace_{version}_amd64"));
    let _ = fs::remove_dir_all(&tree);
    for (src, dest, mode) in FILES {
        install(&root.join(src), &tree.join(dest), *mode)?;
    }
    // Debian ships stripped binaries; the eBPF object inside is data.
    let strip = Command::new("strip")
        .arg("--strip-unneeded")
        .arg(tree.join("usr/sbin/closetrace"))
        .status();
    if !strip.is_ok_and(|s| s.success()) {
        println!("xtask: strip failed or is missing: the binary is packaged unstripped");
    }
    let man = tree.join("usr/share/man/man8/closetrace.8.gz");
    fs::create_dir_all(man.parent().context("man dir")?)?;
    let gz = Command::new("gzip")
        .args(["-9n", "-c"])
        .arg(root.join("deploy/man/closetrace.8"))
        .output()
        .context("gzip")?;
    if !gz.status.success() {
        bail!("gzip of the man page failed");
    }
    fs::write(&man, gz.stdout)?;
    fs::write(tree.join("DEBIAN/conffiles"), "/etc/default/closetrace\n")?;
    let control = control(&version, &glibc_needed(&binary)?, installed_kib(&tree)?);
    fs::write(tree.join("DEBIAN/control"), control)?;
    let deb = out_dir.join(format!("closetrace_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .status()
        .context("running dpkg-deb (Debian's dpkg package)")?;
    if !status.success() {
        bail!("dpkg-deb failed: {status}");
    }
    println!("xtask: built {}", deb.display());
    Ok(deb)
}

fn install(src: &Path, dest: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dest.parent().context("parent")?)?;
    fs::copy(src, dest).with_context(|| format!("copying {}", src.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `closetrace --version` says `closetrace X.Y.Z`.
fn version_of(binary: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .context("closetrace --version printed no version")
}

/// The newest glibc symbol version the binary uses (`GLIBC_2.34` ...).
fn glibc_needed(binary: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(binary)?;
    let mut newest = (2u32, 17u32);
    for at in memchr_all(&bytes, b"GLIBC_2.") {
        let digits: String = bytes[at + 8..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(minor) = digits.parse::<u32>() {
            newest = newest.max((2, minor));
        }
    }
    Ok(format!("{}.{}", newest.0, newest.1))
}

fn memchr_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Installed-Size: the files' sizes in KiB, each rounded up.
fn installed_kib(tree: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "DEBIAN") {
                continue;
            }
            if e.file_type()?.is_dir() {
                walk(&p, total)?;
            } else {
                *total += e.metadata()?.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(tree, &mut total)?;
    Ok(total)
}

fn control(version: &str, glibc: &str, kib: u64) -> String {
    format!(
        "Package: closetrace\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: closetrace developers <closetrace@localhost>\n\
         Installed-Size: {kib}\n\
         Depends: libc6 (>= {glibc})\n\
         Recommends: systemd\n\
         Section: net\n\
         Priority: optional\n\
         X-Kernel-Needed: {KERNEL_NEEDED}\n\
         Description: TCP teardown tracer: CLOSE_WAIT leaks, TIME_WAIT pressure (eBPF)\n \
         closetrace traces TCP state changes and closes in the kernel and names\n \
         the process behind each finding: sockets left in CLOSE_WAIT (with\n \
         every holder, what its threads are doing and its fd budget), TIME_WAIT\n \
         pressure on ephemeral ports, and connect()/bind() failing with\n \
         EADDRNOTAVAIL or EADDRINUSE, in every network namespace of the host.\n \
         .\n \
         Needs {KERNEL_NEEDED}.\n \
         The service is installed disabled: review /etc/default/closetrace,\n \
         then systemctl enable --now closetrace.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_states_the_kernel_and_a_wrapped_description() {
        let c = control("0.1.0", "2.34", 5120);
        assert!(c.contains("X-Kernel-Needed: Linux >= 5.10"));
        assert!(c.contains("Depends: libc6 (>= 2.34)\n"));
        // Every continuation line of the description starts with a space.
        let desc = c.split("Description:").nth(1).unwrap();
        assert!(desc.lines().skip(1).all(|l| l.starts_with(' ')), "{desc}");
        assert!(c.ends_with('\n'));
    }

    #[test]
    fn the_newest_glibc_version_is_found() {
        let dir = std::env::temp_dir().join(format!("xtask-deb-{}", std::process::id()));
        fs::write(&dir, b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0").unwrap();
        assert_eq!(glibc_needed(&dir).unwrap(), "2.34");
        let _ = fs::remove_file(&dir);
    }
}
