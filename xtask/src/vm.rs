//! `cargo xtask integration-test --vm`: boot stock Debian cloud kernels
//! under qemu (TCG) and run closetrace's kernel tests inside them, so the
//! fentry and kprobe paths that this host refuses are exercised too.
//!
//! Everything comes from Debian packages: qemu-system-x86, busybox-static,
//! cpio and xz-utils are installed when missing, kernels are fetched with
//! `apt-get download`. The guest is an initramfs holding busybox, the test
//! binaries at their host paths (their CARGO_BIN_EXE paths are absolute)
//! and the shared libraries they need. qemu exits 0 whatever happened, so
//! the verdict travels over the serial console as marker lines.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// (test binary, test) run inside each guest: acceptance 1 and 3 of the
/// core issue, 1, 2, 4 and 6 of the leak issue.
const TESTS: &[(&str, &str)] = &[
    ("state_stream", "owner_is_the_server_ipv4"),
    ("state_stream", "owner_is_the_server_ipv6"),
    ("state_stream", "losses_are_counted_and_reported"),
    ("leaks", "leaky_server_is_reported_with_its_fd"),
    ("leaks", "prompt_server_never_leaks"),
    ("leaks", "fork_names_the_child"),
    // Owners from accept(): the fd-table offsets on each kernel.
    ("leaks", "prefork_workers_own_what_they_accept"),
    ("state_stream", "owner_from_io_is_opt_in"),
    ("leaks", "leak_from_before_startup_is_reported"),
    // A never-accepted socket's listener, found in each kernel's sock_diag.
    ("leaks", "unaccepted_connection_names_the_listener"),
    // shutdown(2) told from a close: by the syscall entry/exit hooks
    // before 5.15, by the caller's syscall number from its registers after.
    ("leaks", "shutdown_is_not_a_close"),
    // The default mode's watched exit from CLOSE_WAIT, through fentry.
    ("leaks", "late_closer_is_reported_once_then_resolved"),
    // Fork and exit hooks, and socket cgroups read through BTF offsets.
    ("scopes", "pid_tree_follows_children_forked_after_start"),
    ("scopes", "cgroup_filter_selects_a_subtree_in_the_kernel"),
    // Process start times read through BTF offsets, equal to /proc's.
    ("hardening", "a_reused_pid_is_another_process"),
    // Every hook's closetrace_hook_attached matches its ready record.
    ("metrics", "hook_attached_follows_the_ready_record"),
    // One opaque id per socket: the cookie, or before 5.12 a keyed hash.
    ("ids", "a_sockets_records_share_one_opaque_id"),
    ("ids", "keyed_ids_still_find_leaks_with_their_holders"),
    // Leak diagnosis: /proc and tcp_info as each kernel gives them, and
    // accept()'s EMFILE from its exit tracepoint.
    ("diagnosis", "a_handler_blocked_on_a_backend_names_it"),
    ("diagnosis", "running_out_of_fds_is_foreseen_then_reported"),
];

/// Run again with tcp_close forced onto its kprobe: the close records and
/// their resolutions then come from the kprobe program.
const KPROBE_TESTS: &[(&str, &str)] = &[
    ("leaks", "prompt_server_never_leaks"),
    ("leaks", "late_closer_streamed"),
    ("leaks", "late_closer_is_reported_once_then_resolved"),
    // A kprobe-attached tcp_close is exported as attached (1).
    ("metrics", "hook_attached_follows_the_ready_record"),
];

/// Kernel series -> apt package name pattern, the tcp_close attach
/// method expected there, and the Debian suite it comes from when not the
/// machine's own (read with package lists of its own, see `apt_for`).
const KERNELS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "5.10",
        r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
        "fentry",
        Some("bullseye"),
    ),
    (
        "6.1",
        r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
        "fentry",
        None,
    ),
    (
        "6.12",
        r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$",
        "fentry",
        None,
    ),
];

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_tools() -> anyhow::Result<()> {
    let missing = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("xz", "xz-utils"),
    ]
    .iter()
    .filter(|(bin, _)| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map_or(true, |o| !o.status.success())
    })
    .map(|(_, pkg)| *pkg)
    .chain((!Path::new("/bin/busybox").exists()).then_some("busybox-static"))
    .collect::<Vec<_>>();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        sh(Command::new("apt-get").arg("update").arg("-qq"))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// apt options that read `suite` of the machine's own Debian archive
/// through a sources file, package lists and cache of their own under
/// `work`, so the machine's apt state is left alone; empty for the
/// machine's own suites.
fn apt_for(work: &Path, suite: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(suite) = suite else {
        return Ok(Vec::new());
    };
    let dir = work.join(format!("apt-{suite}"));
    let parts = dir.join("sources.list.d");
    for d in [
        parts.clone(),
        dir.join("lists/partial"),
        dir.join("cache/archives/partial"),
    ] {
        fs::create_dir_all(d)?;
    }
    fs::write(dir.join("sources.list"), "")?;
    fs::write(
        parts.join("debian.sources"),
        format!(
            "Types: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            archive_uri()?
        ),
    )?;
    let opt = |k: &str, v: &Path| ["-o".to_string(), format!("{k}={}", v.display())];
    Ok([
        opt("Dir::Etc::sourcelist", &dir.join("sources.list")),
        opt("Dir::Etc::sourceparts", &parts),
        opt("Dir::State::Lists", &dir.join("lists")),
        opt("Dir::Cache", &dir.join("cache")),
    ]
    .concat())
}

/// The Debian archive this machine's apt uses (its first source that is
/// not the security archive).
fn archive_uri() -> anyhow::Result<String> {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for e in fs::read_dir("/etc/apt/sources.list.d")?.flatten() {
        if e.path()
            .extension()
            .is_some_and(|x| x == "sources" || x == "list")
        {
            text += &fs::read_to_string(e.path()).unwrap_or_default();
            text.push('\n');
        }
    }
    first_archive(&text).context("no Debian archive in /etc/apt/sources.list(.d)")
}

/// The first Debian archive URI in apt sources text (one-line or deb822),
/// comments and the security archive skipped.
fn first_archive(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .find(|w| w.starts_with("http") && w.contains("/debian") && !w.contains("security"))
        .map(|u| u.trim_end_matches('/').to_string())
}

/// The newest package matching `pattern`, downloaded (once) and unpacked.
fn kernel(work: &Path, series: &str, pattern: &str, apt: &[String]) -> anyhow::Result<PathBuf> {
    let search = || {
        sh(Command::new("apt-cache")
            .args(apt)
            .args(["search", "--names-only", pattern]))
    };
    let mut names = search()?;
    if names.trim().is_empty() {
        // Package lists may be missing or stale on a fresh machine.
        sh(Command::new("apt-get").args(apt).arg("update").arg("-qq"))?;
        names = search()?;
    }
    let mut pkgs: Vec<&str> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // Highest ABI/patch number: compare the digit runs numerically.
    pkgs.sort_by_key(|p| {
        p.split(|c: char| !c.is_ascii_digit())
            .filter_map(|d| d.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    let pkg = *pkgs
        .last()
        .with_context(|| format!("no package matches {pattern} (apt-get update?)"))?;
    let dir = work.join(format!("kernel-{series}"));
    if !dir.join("boot").is_dir() {
        let dl = work.join("debs");
        fs::create_dir_all(&dl)?;
        sh(Command::new("apt-get")
            .args(apt)
            .args(["download", pkg])
            .current_dir(&dl))?;
        let deb = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
            })
            .context("downloaded package")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    }
    eprintln!("xtask: kernel {series}: {pkg}");
    Ok(dir)
}

fn find(dir: &Path, prefix: &str) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find(&p, prefix) {
                return Some(f);
            }
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
        {
            return Some(p);
        }
    }
    None
}

/// Test binaries built by cargo, by name (state_stream -> its executable).
fn test_binaries(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    // Every test binary the lists name, and only those.
    let mut names: Vec<&str> = TESTS.iter().chain(KPROBE_TESTS).map(|t| t.0).collect();
    names.sort_unstable();
    names.dedup();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args([
        "test",
        "-p",
        "closetrace",
        "--features",
        "testkit",
        "--no-run",
        "--message-format=json",
    ]);
    for name in names {
        cmd.args(["--test", name]);
    }
    let out = sh(&mut cmd)?;
    Ok(out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_string(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect())
}

fn copy_with_libs(rootfs: &Path, bin: &Path) -> anyhow::Result<()> {
    let dest = rootfs.join(bin.strip_prefix("/")?);
    fs::create_dir_all(dest.parent().context("parent")?)?;
    fs::copy(bin, &dest)?;
    let ldd = sh(Command::new("ldd").arg(bin)).unwrap_or_default();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let d = rootfs.join(lib.trim_start_matches('/'));
        if !d.exists() {
            fs::create_dir_all(d.parent().context("parent")?)?;
            fs::copy(lib, &d).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

// No tmpfs on /tmp: the initramfs root is writable already, and the test
// binaries may live under /tmp (a checkout there), which a mount would hide.
fn init_script(
    closetrace: &Path,
    tests: &[(PathBuf, &str)],
    kprobe_tests: &[(PathBuf, &str)],
) -> String {
    let mut s = String::from(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         for m in /modules/*.ko; do insmod $m; done\nip link set lo up\n\
         export CLOSETRACE_REQUIRE_KERNEL_TESTS=1 RUST_BACKTRACE=0\n\
         echo \"VM-KERNEL $(cat /proc/sys/kernel/osrelease)\"\n",
    );
    for (marker, list) in [("", tests), ("-KPROBE", kprobe_tests)] {
        if !marker.is_empty() {
            s += "export CLOSETRACE_CLOSE_HOOK=kprobe\n";
        }
        s += &format!(
            "echo \"VM-READY{marker} $({} --format json --duration 1s 2>/dev/null | head -1)\"\n",
            closetrace.display()
        );
        for (bin, test) in list {
            s += &format!(
                "if {} --exact {test} > /tmp/out 2>&1; then echo 'VM-TEST{marker} {test} PASS'; \
                 else echo 'VM-TEST{marker} {test} FAIL'; grep -E 'panicked|assert|never' /tmp/out | head -5; fi\n",
                bin.display()
            );
        }
    }
    s + "echo VM-DONE\npoweroff -f\n"
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    ensure_tools()?;
    let work = root.join("target/vm");
    fs::create_dir_all(&work)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh(Command::new(&cargo).current_dir(root).args([
        "build",
        "-p",
        "closetrace",
        "--bins",
        "--features",
        "testkit",
    ]))?;
    let bins = test_binaries(root)?;
    let debug = root.join("target/debug");
    let resolve = |list: &[(&str, &'static str)]| -> anyhow::Result<Vec<(PathBuf, &'static str)>> {
        list.iter()
            .map(|(bin, test)| {
                let path = bins.iter().find(|(n, _)| n == bin).map(|(_, p)| p.clone());
                path.map(|p| (p, *test))
                    .with_context(|| format!("test binary {bin} not built"))
            })
            .collect()
    };
    let tests = resolve(TESTS)?;
    let kprobe_tests = resolve(KPROBE_TESTS)?;
    // CLOSETRACE_VM_KERNELS=5.10,6.1: only those guests, and not the host
    // (while working on one kernel; the matrix is always run whole in CI).
    let only = std::env::var("CLOSETRACE_VM_KERNELS").ok();
    let chosen = |series: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|k| k == series))
    };
    let mut failures = match only {
        Some(_) => Vec::new(),
        None => host(&debug.join("closetrace"), &tests)?,
    };
    let kernels: Vec<_> = KERNELS.iter().filter(|k| chosen(k.0)).collect();
    let hosts = usize::from(only.is_none());
    for (series, pattern, expect, suite) in &kernels {
        let apt = apt_for(&work, *suite)?;
        let kdir = kernel(&work, series, pattern, &apt)?;
        let rootfs = build_rootfs(&work, series, &kdir, &debug, &tests)?;
        fs::write(
            rootfs.join("init"),
            init_script(&debug.join("closetrace"), &tests, &kprobe_tests),
        )?;
        sh(Command::new("chmod").arg("+x").arg(rootfs.join("init")))?;
        let console = boot(&work, series, &kdir, &rootfs)?;
        failures.extend(verdict(series, expect, &console));
    }
    let total = TESTS.len() * (hosts + kernels.len()) + KPROBE_TESTS.len() * kernels.len();
    println!(
        "kernel-matrix: {} passed, {} failed",
        total - failures.len().min(total),
        failures.len()
    );
    if !failures.is_empty() {
        bail!("kernel matrix failed:\n  {}", failures.join("\n  "));
    }
    println!(
        "xtask: kernel matrix passed ({} kernels, {} tests each)",
        kernels.len(),
        TESTS.len()
    );
    Ok(())
}

/// A root filesystem for `series`: busybox, closetrace, the peer and the
/// test binaries with their libraries, and the sock_diag modules.
fn build_rootfs(
    work: &Path,
    series: &str,
    kdir: &Path,
    debug: &Path,
    tests: &[(PathBuf, &str)],
) -> anyhow::Result<PathBuf> {
    let rootfs = work.join(format!("rootfs-{series}"));
    let _ = fs::remove_dir_all(&rootfs);
    for d in ["bin", "proc", "sys", "dev", "tmp", "modules"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    for a in [
        "sh", "mount", "ip", "insmod", "poweroff", "cat", "echo", "grep", "head", "sleep",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
    }
    for b in [debug.join("closetrace"), debug.join("closetrace-peer")]
        .iter()
        .chain(tests.iter().map(|(p, _)| p))
    {
        copy_with_libs(&rootfs, b)?;
    }
    // TCP sock_diag is a module on Debian kernels.
    for m in ["inet_diag.ko", "tcp_diag.ko"] {
        let src = find(&kdir.join("lib/modules"), m).with_context(|| format!("{m} in {series}"))?;
        let dest = rootfs
            .join("modules")
            .join(format!("{}-{m}", if m.starts_with("inet") { 1 } else { 2 }));
        if src.extension().is_some_and(|e| e == "xz") {
            sh(Command::new("sh").arg("-c").arg(format!(
                "xz -dc '{}' > '{}'",
                src.display(),
                dest.display()
            )))?;
        } else {
            fs::copy(&src, &dest)?;
        }
    }
    Ok(rootfs)
}

/// Pack `rootfs` and boot `series`' kernel on it under qemu; returns the
/// console (also kept in target/vm/console-SERIES.log).
fn boot(work: &Path, series: &str, kdir: &Path, rootfs: &Path) -> anyhow::Result<String> {
    let initrd = work.join(format!("initrd-{series}.gz"));
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        rootfs.display(),
        initrd.display()
    )))?;
    let vmlinuz = find(&kdir.join("boot"), "vmlinuz-").context("vmlinuz")?;
    eprintln!("xtask: booting {series} under qemu (TCG; a few minutes)");
    let out = Command::new("timeout")
        .args([
            "1200",
            "qemu-system-x86_64",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .output()
        .context("running qemu")?;
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    fs::write(
        work.join(format!("console-{series}.log")),
        console.as_bytes(),
    )?;
    Ok(console)
}

/// The same tests on this host's own kernel. Its tcp_close method depends
/// on the kernel: CLOSETRACE_HOST_CLOSE_HOOK names the one expected (CI sets
/// it for its machines); unset, it is reported, not checked.
fn host(closetrace: &Path, tests: &[(PathBuf, &str)]) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let ready = sh(Command::new(closetrace).args(["--format", "json", "--duration", "1s"]))?;
    let attach = ready
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|r| {
            let hooks = r["hooks"].as_array()?.clone();
            let h = hooks.into_iter().find(|h| h["hook"] == "tcp_close")?;
            h["attach"].as_str().map(String::from)
        })
        .unwrap_or_else(|| "none".into());
    match std::env::var("CLOSETRACE_HOST_CLOSE_HOOK") {
        Ok(want) if want != attach => {
            failures.push(format!("host: tcp_close via {attach}, expected {want}"))
        }
        _ => println!("xtask: host: tcp_close via {attach}"),
    }
    for (bin, test) in tests {
        let out = Command::new(bin)
            .args(["--exact", test])
            .env("CLOSETRACE_REQUIRE_KERNEL_TESTS", "1")
            .stdin(Stdio::null())
            .output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        println!("xtask: host: {test}: {}", if ok { "pass" } else { "FAIL" });
        if !ok {
            // As in the guests: the panic, so a failure can be read in the log.
            if let Ok(o) = &out {
                let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
                let why = text
                    .lines()
                    .filter(|l| l.contains("panicked") || l.contains("assert"));
                why.take(5).for_each(|l| println!("xtask: host:   {l}"));
            }
            failures.push(format!("host: {test}"));
        }
    }
    Ok(failures)
}

/// Failures read off one guest's console.
fn verdict(series: &str, expect: &str, console: &str) -> Vec<String> {
    let mut failures = Vec::new();
    if !console.contains("VM-DONE") {
        failures.push(format!(
            "{series}: the guest did not finish (see target/vm/console-{series}.log)"
        ));
    }
    for (marker, want, list) in [("", expect, TESTS), ("-KPROBE", "kprobe", KPROBE_TESTS)] {
        let ready = console
            .lines()
            .find_map(|l| l.split_once(&format!("VM-READY{marker} ")).map(|(_, r)| r))
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r.trim()).ok());
        let attach = ready.as_ref().and_then(|r| {
            let hooks = r["hooks"].as_array()?;
            let h = hooks.iter().find(|h| h["hook"] == "tcp_close")?;
            h["attach"].as_str().map(String::from)
        });
        match attach.as_deref() {
            Some(a) if a == want => println!("xtask: {series}{marker}: tcp_close via {a}"),
            Some(a) => failures.push(format!(
                "{series}{marker}: tcp_close via {a}, expected {want}"
            )),
            None => failures.push(format!("{series}{marker}: no ready record from closetrace")),
        }
        for (_, test) in list {
            let pass = console.contains(&format!("VM-TEST{marker} {test} PASS"));
            println!(
                "xtask: {series}{marker}: {test}: {}",
                if pass { "pass" } else { "FAIL" }
            );
            if !pass {
                failures.push(format!("{series}{marker}: {test}"));
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\n# http://snapshot.example/debian/x\nURIs: http://mirror.example/debian\n\
                      Suites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n";
        assert_eq!(
            first_archive(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "deb http://mirror.example/debian-security bookworm-security main\n\
                        deb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            first_archive(one_line).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            first_archive("deb https://other.example/apt stable main"),
            None
        );
    }

    #[test]
    fn verdict_reads_markers() {
        let ready =
            |a: &str| format!("{{\"hooks\":[{{\"hook\":\"tcp_close\",\"attach\":\"{a}\"}}]}}");
        let mut console = format!(
            "VM-KERNEL 6.1\nVM-READY {}\nVM-READY-KPROBE {}\n",
            ready("fentry"),
            ready("kprobe")
        );
        for (_, t) in TESTS {
            console += &format!("VM-TEST {t} PASS\n");
        }
        for (_, t) in KPROBE_TESTS {
            console += &format!("VM-TEST-KPROBE {t} PASS\n");
        }
        assert_eq!(
            verdict("6.1", "fentry", &(console.clone() + "VM-DONE\n")),
            Vec::<String>::new()
        );
        let f = verdict("6.1", "kprobe", &console);
        assert_eq!(f.len(), 2, "{f:?}");
        let failing = console.replace(
            "VM-TEST prompt_server_never_leaks PASS",
            "VM-TEST prompt_server_never_leaks FAIL",
        ) + "VM-DONE\n";
        assert_eq!(
            verdict("6.1", "fentry", &failing),
            vec!["6.1: prompt_server_never_leaks".to_string()]
        );
    }
}
