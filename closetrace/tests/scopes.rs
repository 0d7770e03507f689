//! Kernel tests for selecting what is traced: `--pid-tree` (a process and
//! its descendants, forked after start included), `--cgroup` (a cgroup the
//! test makes, and one made below it after start) and `--netns`.
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Lines, Netns, PEER, Peer, Tracer, connect_once, kernel_test, leak_on};

const THRESHOLD: &str = "1s";

/// A shell script run with the peer binary as $0's neighbour `$P`, its
/// stdout read like a peer's.
fn shell(script: &str) -> Peer {
    let mut child = Command::new("sh")
        .args(["-c", script])
        // Its own group, so that `Group` can stop the whole tree.
        .process_group(0)
        .env("P", PEER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    Peer { child, lines }
}

/// Kills a shell's whole process group when the test ends, however it ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling a process group this test made.
        unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
    }
}

fn leak_for(port: u16) -> impl Fn(&Value) -> bool {
    move |r| r["type"] == "close_wait_leak" && r["sport"] == port
}

/// Kills what it holds, then removes the cgroup (rmdir needs it empty).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(parent: &std::path::Path, name: &str) -> Cgroup {
        let dir = parent.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup { dir }
    }

    fn id(&self) -> u64 {
        fs::metadata(&self.dir).expect("cgroup dir").ino()
    }

    /// A leaky server started inside this cgroup.
    fn leaky_server(&self) -> Peer {
        shell(&format!(
            "echo $$ > {}/cgroup.procs && exec \"$P\" server --never-close",
            self.dir.display()
        ))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<u32>().ok()) {
                    support::kill(pid);
                }
            }
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if !post.starts_with("cgroup2 ") {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount")
}

/// A process tree started before closetrace forks a leaky server (and a
/// grandchild) after it: both are followed; a leak outside the tree is not.
#[test]
fn pid_tree_follows_children_forked_after_start() {
    let Some(_k) = kernel_test("pid_tree_follows_children_forked_after_start") else {
        return;
    };
    // The root waits for a line before forking anything.
    let mut root = shell(
        "read go; \"$P\" server --never-close & \
         sh -c 'echo GRANDCHILD $$; \"$P\" server --never-close; true' & wait",
    );
    let _group = Group(root.pid());
    let mut outsider = Peer::spawn(&["server", "--never-close"]);
    let root_pid = root.pid().to_string();
    let mut tracer = Tracer::start(&["--pid-tree", &root_pid, "--close-wait-threshold", THRESHOLD]);
    assert_eq!(tracer.ready["pid_tree"][0], root.pid());
    writeln!(root.child.stdin.as_mut().expect("stdin"), "go").expect("start the tree");
    let grandchild = root.number("GRANDCHILD");
    // Two servers in the tree, each printing LISTENING.
    let ports: Vec<u16> = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ports: Vec<u16> = root
                .lines
                .seen
                .iter()
                .filter_map(|l| l.strip_prefix("LISTENING ")?.trim().parse().ok())
                .collect();
            if ports.len() == 2 || std::time::Instant::now() > deadline {
                break ports;
            }
            // Pulls new lines into `seen`.
            root.lines.wait_for(Duration::from_millis(200), |_| false);
        }
    };
    assert_eq!(ports.len(), 2, "the tree's servers: {:?}", root.lines.seen);
    for &port in &ports {
        connect_once(port);
    }
    let outside = leak_on(&mut outsider);
    for &port in &ports {
        let leak = tracer
            .wait_record(Duration::from_secs(15), leak_for(port))
            .unwrap_or_else(|| panic!("no leak reported for the tree's server on {port}"));
        let pid = leak["pid"].as_u64().expect("a pid") as u32;
        assert_ne!(pid, root.pid(), "the servers are children, not the root");
        assert_ne!(pid, outsider.pid());
    }
    // The grandchild's server is one of them (sh may exec its last command).
    let pids: Vec<u32> = tracer
        .lines
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "close_wait_leak")
        .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
        .collect();
    let grand_tree = [grandchild];
    let in_grand = pids.iter().any(|p| {
        grand_tree.contains(p) || parent_of(*p).is_some_and(|pp| grand_tree.contains(&pp))
    });
    assert!(
        in_grand,
        "no leak from the grandchild {grandchild}: {pids:?}"
    );
    // Give the outsider's leak as long as the others had, then more.
    std::thread::sleep(Duration::from_secs(2));
    let done = tracer.stop();
    assert!(
        done.of_type("close_wait_leak")
            .all(|r| r["sport"] != outside),
        "a leak outside the tree was reported"
    );
    assert!(done.status.success(), "{}", done.stderr);
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `--cgroup` sees the sockets of a cgroup the test makes and of one made
/// below it after start, stamps them with their cgroup id, and nothing
/// from outside.
#[test]
fn cgroup_filter_selects_a_subtree_in_the_kernel() {
    let Some(_k) = kernel_test("cgroup_filter_selects_a_subtree_in_the_kernel") else {
        return;
    };
    let root = cgroup2_root();
    let group = Cgroup::new(&root, &format!("closetrace-test-{}", std::process::id()));
    let mut inside = group.leaky_server();
    let mut outsider = Peer::spawn(&["server", "--never-close"]);
    let arg = format!("/{}", group.dir.strip_prefix(&root).unwrap().display());
    let mut tracer = Tracer::start(&[
        "--cgroup",
        &arg,
        "--states",
        "--close-wait-threshold",
        THRESHOLD,
    ]);
    assert_eq!(tracer.ready["cgroup"], arg.as_str());
    // Made after start: the filter follows the subtree. Named the way
    // docker's systemd driver names a container's scope.
    let container_id = format!("{:064x}", 0xc105e7aceu64 + u64::from(std::process::id()));
    let sub = Cgroup::new(&group.dir, &format!("docker-{container_id}.scope"));
    let mut late = sub.leaky_server();
    let in_port = leak_on(&mut inside);
    let late_port = leak_on(&mut late);
    let out_port = leak_on(&mut outsider);
    for (port, id) in [(in_port, group.id()), (late_port, sub.id())] {
        let leak = tracer
            .wait_record(Duration::from_secs(15), leak_for(port))
            .unwrap_or_else(|| panic!("no leak reported inside the cgroup on {port}"));
        assert_eq!(leak["cgroup"], id, "{leak}");
        assert!(leak["netns"].as_u64().unwrap() > 0, "{leak}");
        if id == sub.id() {
            assert_eq!(leak["container"]["runtime"], "docker", "{leak}");
            assert_eq!(leak["container"]["id"], container_id.as_str(), "{leak}");
        } else {
            assert!(leak.get("container").is_none(), "{leak}");
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let done = tracer.stop();
    let ids = [group.id(), sub.id()];
    let states: Vec<&Value> = done.of_type("state").collect();
    assert!(!states.is_empty(), "no state records at all");
    for s in &states {
        let id = s["cgroup"].as_u64().expect("cgroup on every state record");
        assert!(
            ids.contains(&id),
            "a socket from cgroup {id} got through: {s}"
        );
        assert!(s["sport"] != out_port && s["dport"] != out_port, "{s}");
    }
    assert!(
        done.of_type("close_wait_leak")
            .all(|r| r["sport"] != out_port)
    );
    assert!(done.status.success(), "{}", done.stderr);
    drop(late);
    drop(inside);
}

/// `--netns` sees one namespace's sockets (given as its file) and stamps
/// records with its inode; the host's do not get through.
#[test]
fn netns_filter_selects_one_namespace() {
    let Some(_k) = kernel_test("netns_filter_selects_one_namespace") else {
        return;
    };
    let ns = Netns::new("filter");
    let path = format!("/run/netns/{}", ns.name);
    let inode = fs::metadata(&path).expect("netns file").ino();
    let tracer = Tracer::start(&["--netns", &path, "--states"]);
    assert_eq!(tracer.ready["netns"], inode);
    // One connection inside the namespace, one on the host.
    let mut server = Peer::spawn_in(&ns, &["server"]);
    let port = server.value("LISTENING");
    support::connect_once_in(&ns, port);
    server.wait_done();
    let mut host = Peer::spawn(&["server"]);
    let host_port = host.value("LISTENING");
    connect_once(host_port);
    host.wait_done();
    let done = tracer.stop();
    let states: Vec<&Value> = done.of_type("state").collect();
    assert!(
        states
            .iter()
            .any(|s| s["sport"] == port || s["dport"] == port),
        "nothing from inside the namespace"
    );
    for s in &states {
        assert_eq!(s["netns"], inode, "{s}");
    }
    assert!(done.status.success(), "{}", done.stderr);
}

/// Bad selections are refused before anything is loaded, with exit 2.
#[test]
fn bad_selections_are_usage_errors() {
    for (args, says) in [
        (vec!["--netns", "/etc/passwd"], "--netns"),
        (vec!["--netns", "0"], "--netns"),
        (vec!["--cgroup", "/no/such/cgroup/here"], "not a cgroup"),
        (vec!["--pid-tree", "4294967"], "--pid-tree"),
    ] {
        let out = Command::new(support::CLOSETRACE)
            .args(&args)
            .output()
            .expect("run closetrace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
