//! The packaging under deploy/: the systemd unit is valid for systemd, and
//! closetrace does its job with exactly the capabilities the unit (and the
//! DaemonSet) grant it, nothing more.
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Peer, Tracer, kernel_test};

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `CAP_BPF CAP_PERFMON ...` from the unit's CapabilityBoundingSet.
fn unit_caps() -> Vec<String> {
    let unit = deploy("systemd/closetrace.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet");
    let caps: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let ambient = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities");
    assert_eq!(ambient.split_whitespace().collect::<Vec<_>>(), caps);
    caps
}

/// Capability numbers (linux/capability.h) of the ones the unit may name.
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other} to cap_bit"),
    }
}

#[test]
fn daemonset_grants_what_the_unit_grants() {
    let ds = deploy("kubernetes/daemonset.yaml");
    let add = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("capabilities add list");
    let mut granted: Vec<String> = add
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|c| format!("CAP_{}", c.trim().trim_matches('"')))
        .collect();
    let mut unit = unit_caps();
    granted.sort();
    unit.sort();
    assert_eq!(granted, unit);
    assert!(ds.contains("drop: [\"ALL\"]"));
    assert!(ds.contains("privileged: false"));
    assert!(
        ds.contains("- --format\n            - json"),
        "JSON lines to stdout"
    );
}

#[test]
fn systemd_unit_verifies() {
    let ok = Command::new("systemd-analyze").arg("--version").output();
    if !ok.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED systemd_unit_verifies: systemd-analyze is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("closetrace-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same unit, pointing at the binary under test (verify checks that
    // ExecStart exists and is executable).
    let unit =
        deploy("systemd/closetrace.service").replace("/usr/sbin/closetrace", support::CLOSETRACE);
    let path = dir.join("closetrace.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about this machine's other units are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("closetrace")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// closetrace under the unit's bounding set (as root's uid, which is what
/// the unit runs as): it loads, attaches and names the holder of a leak
/// in a process of another user.
#[test]
fn the_units_capabilities_are_enough() {
    let Some(_k) = kernel_test("the_units_capabilities_are_enough") else {
        return;
    };
    let caps = unit_caps();
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut setpriv = Command::new("setpriv");
    setpriv.arg(format!("--bounding-set=-all,{}", set.join(",")));
    let mut tracer = Tracer::start_wrapped(setpriv, &["--close-wait-threshold", "1s"]);
    // It really runs with no more than those.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", tracer.child.id())).expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    let allowed: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    assert_eq!(
        eff & !allowed,
        0,
        "closetrace has more than the unit grants: {eff:x}"
    );
    // After attaching it keeps what naming holders and entering other
    // network namespaces need, and says why.
    let kept = &tracer.ready["privileges"];
    assert_eq!(
        kept["kept"],
        serde_json::json!(["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]),
        "{kept}"
    );
    assert!(kept["note"].as_str().unwrap().contains("setns"), "{kept}");
    let hooks = tracer.ready["hooks"].as_array().expect("hooks");
    assert!(
        hooks
            .iter()
            .any(|h| h["hook"] == "sock:inet_sock_set_state" && h["status"] == "ok")
    );

    // The server runs as nobody: naming it takes reading another user's fds.
    let mut server = Peer::spawn_as_nobody(&["server", "--never-close"]);
    let port = support::leak_on(&mut server);
    let leak = tracer
        .wait_record(Duration::from_secs(15), |r| {
            r["type"] == "close_wait_leak" && r["sport"] == port
        })
        .expect("the leak is reported under the unit's capabilities");
    assert_eq!(leak["pid"], server.pid());
    assert_eq!(leak["holders"][0]["pid"], server.pid(), "{leak}");
    // ... and its diagnosis: another user's threads, their system calls
    // (CAP_SYS_PTRACE, kept) and its fd limit.
    let p = &leak["diagnosis"]["processes"][0];
    assert_eq!(p["pid"], server.pid(), "{leak}");
    assert!(p["groups"][0]["syscall"].is_string(), "{leak}");
    assert!(p["fd_budget"]["fds"].as_u64().unwrap() >= 3, "{leak}");
    let done = tracer.stop();
    assert!(done.status.success(), "{}", done.stderr);
}

/// Without CAP_SYS_ADMIN only closetrace's own namespace is read: it says
/// so, and a leak in another namespace is still reported, from events.
#[test]
fn without_sys_admin_other_namespaces_come_from_events() {
    let Some(_k) = kernel_test("without_sys_admin_other_namespaces_come_from_events") else {
        return;
    };
    let set: Vec<String> = unit_caps()
        .iter()
        .filter(|c| *c != "CAP_SYS_ADMIN")
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut setpriv = Command::new("setpriv");
    setpriv.arg(format!("--bounding-set=-all,{}", set.join(",")));
    let mut tracer = Tracer::start_wrapped(setpriv, &["--close-wait-threshold", "1s"]);
    let ns = support::Netns::new("nosysadmin");
    let mut server = Peer::spawn_in(
        &ns,
        &["server", "--listen", "127.0.0.1:9501", "--never-close"],
    );
    server.value("LISTENING");
    support::connect_once_in(&ns, 9501);
    let leak = tracer.wait_record(Duration::from_secs(6), |r| {
        r["type"] == "close_wait_leak" && r["sport"] == 9501
    });
    let done = tracer.stop();
    let leak = leak.unwrap_or_else(|| panic!("no leak from events: {}", done.stderr));
    assert_eq!(
        leak["pid"],
        server.pid(),
        "the owner, from the kernel: {leak}"
    );
    assert!(
        done.stderr
            .contains("cannot enter other network namespaces"),
        "{}",
        done.stderr
    );
}
