//! The Debian package `cargo xtask deb` builds (`cargo xtask test` builds
//! it first): installed with dpkg into this machine, checked, run against
//! a leaky server, then removed and purged without a trace.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Peer, REQUIRE_ENV, Tracer, connect_once, kernel_test};

fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1")
}

/// The newest target/deb/closetrace_*_amd64.deb.
fn package() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/deb");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    debs.pop()
}

fn sh(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Files the installed package owns (not directories).
fn owned_files() -> Vec<String> {
    let (_, list) = sh(Command::new("dpkg").args(["-L", "closetrace"]));
    list.lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_installs_runs_and_leaves_nothing_behind() {
    let Some(_k) = kernel_test("the_package_installs_runs_and_leaves_nothing_behind") else {
        return;
    };
    let Some(deb) = package() else {
        let msg = "no package in target/deb: run cargo xtask deb (cargo xtask test does)";
        assert!(!required(), "{msg}");
        eprintln!("SKIPPED {msg}");
        return;
    };
    // What it holds, and what it must not.
    let (ok, contents) = sh(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{contents}");
    for path in [
        "./usr/sbin/closetrace",
        "./lib/systemd/system/closetrace.service",
        "./etc/default/closetrace",
        "./usr/share/man/man8/closetrace.8.gz",
        "./usr/share/bash-completion/completions/closetrace",
        "./usr/share/closetrace/prometheus/closetrace.rules.yml",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    for tool in ["closetrace-peer", "closetrace-churn"] {
        assert!(!contents.contains(tool), "{tool} is packaged:\n{contents}");
    }
    let (_, kernel) = sh(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("X-Kernel-Needed"));
    assert!(kernel.contains("5.10"), "the kernel it needs: {kernel}");

    let (ok, out) = sh(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i: {out}");
    let installed = owned_files();
    let (ok, version) = sh(Command::new("/usr/sbin/closetrace").arg("--version"));
    assert!(ok && version.starts_with("closetrace "), "{version}");
    let (ok, man) = sh(Command::new("man").args(["-w", "closetrace"]));
    assert!(
        ok && man.trim() == "/usr/share/man/man8/closetrace.8.gz",
        "{man}"
    );
    let completion = std::fs::read_to_string("/usr/share/bash-completion/completions/closetrace")
        .expect("the bash completion file");
    assert!(completion.contains("closetrace"));
    let (ok, verify) = sh(Command::new("systemd-analyze").args([
        "verify",
        "--man=no",
        "/lib/systemd/system/closetrace.service",
    ]));
    let ours: Vec<&str> = verify
        .lines()
        .filter(|l| l.contains("closetrace"))
        .collect();
    assert!(ok && ours.is_empty(), "{verify}");
    // Installed, but nothing traced by surprise.
    let (_, enabled) = sh(Command::new("systemctl").args(["is-enabled", "closetrace.service"]));
    assert!(!enabled.trim().starts_with("enabled"), "{enabled}");

    // The installed binary does the job.
    let mut tracer =
        Tracer::start_binary("/usr/sbin/closetrace", &["--close-wait-threshold", "1s"]);
    let mut server = Peer::spawn(&["server", "--never-close"]);
    let port = server.value("LISTENING");
    connect_once(port);
    let leak = tracer
        .wait_record(Duration::from_secs(10), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("the installed closetrace reports the leak");
    assert_eq!(leak["pid"], server.pid());
    drop(tracer);

    // Removed: every file but the conffile is gone; purged: that too.
    let (ok, out) = sh(Command::new("dpkg").args(["-r", "closetrace"]));
    assert!(ok, "dpkg -r: {out}");
    let left: Vec<&String> = installed.iter().filter(|f| Path::new(f).exists()).collect();
    assert_eq!(left, ["/etc/default/closetrace"], "left after dpkg -r");
    let (ok, out) = sh(Command::new("dpkg").args(["-P", "closetrace"]));
    assert!(ok, "dpkg -P: {out}");
    let left: Vec<&String> = installed.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after dpkg -P: {left:?}");
    let (known, _) = sh(Command::new("dpkg").args(["-s", "closetrace"]));
    assert!(!known, "dpkg still knows the package");
}
