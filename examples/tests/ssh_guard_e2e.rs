//! End to end on real OpenSSH in network namespaces: Debian's sshd runs in an "agent"
//! namespace logging to a file (`sshd -E`), `ssh-guard --follow` follows that file and blocks
//! with the real nftables executor in the same namespace. An "attacker" namespace fails to log
//! in N times with a real SSH client (sshpass), after which its TCP connections to port 22 are
//! dropped; a client in a third namespace still logs in with the right password.
//!
//! Needs root, `ip`, `nft`, `sshd`, `ssh` and `sshpass` (`.ci/run` installs them).

// Test helpers outside `#[test]` functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use examples::example_bin;

/// Failed logins before the block (the policy's threshold).
const THRESHOLD: usize = 3;
const AGENT_TO_ATTACKER: &str = "10.77.1.1";
const ATTACKER: &str = "10.77.1.2";
const AGENT_TO_CLIENT: &str = "10.77.2.1";
const CLIENT: &str = "10.77.2.2";
const PASSWORD: &str = "Corr3ct-horse";

/// Everything the test set up, torn down in `drop` whatever happened.
struct Lab {
    id: u32,
    dir: tempfile::TempDir,
    user: String,
    user_created: bool,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("sg{role}{}", self.id)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            // Deleting the namespace takes its veths and nftables tables with it.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if self.user_created {
            let _ = Command::new("userdel").arg(&self.user).status();
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}`: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Waits for `done` with a deadline, polling.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a TCP connection from `ns` to `ip:22` opens within two seconds.
fn tcp_connects(ns: &str, ip: &str) -> bool {
    in_ns(
        ns,
        "timeout",
        &["2", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/22")],
    )
    .stderr(Stdio::null())
    .status()
    .unwrap()
    .success()
}

/// One password login from `ns`; returns the remote command's output on success.
fn ssh_login(ns: &str, user: &str, ip: &str, password: &str) -> Option<String> {
    let output = in_ns(
        ns,
        "sshpass",
        &[
            "-p",
            password,
            "ssh",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            &format!("{user}@{ip}"),
            "echo logged-in",
        ],
    )
    .output()
    .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn setup_network(lab: &mut Lab) {
    for role in ["a", "x", "c"] {
        let ns = lab.ns(role);
        run("ip", &["netns", "add", &ns]);
        lab.namespaces.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
    }
    let (agent, attacker, client) = (lab.ns("a"), lab.ns("x"), lab.ns("c"));
    for (peer, agent_ip, peer_ip, tag) in [
        (&attacker, AGENT_TO_ATTACKER, ATTACKER, "x"),
        (&client, AGENT_TO_CLIENT, CLIENT, "c"),
    ] {
        let near = format!("sg{tag}a{}", lab.id % 100_000);
        let far = format!("sg{tag}p{}", lab.id % 100_000);
        run(
            "ip",
            &[
                "link", "add", &near, "netns", &agent, "type", "veth", "peer", "name", &far,
                "netns", peer,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &agent,
                "addr",
                "add",
                &format!("{agent_ip}/24"),
                "dev",
                &near,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                peer,
                "addr",
                "add",
                &format!("{peer_ip}/24"),
                "dev",
                &far,
            ],
        );
        run("ip", &["-n", &agent, "link", "set", &near, "up"]);
        run("ip", &["-n", peer, "link", "set", &far, "up"]);
    }
}

fn setup_user(lab: &mut Lab) {
    run("useradd", &["-M", "-s", "/bin/sh", &lab.user]);
    lab.user_created = true;
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    chpasswd
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}:{PASSWORD}\n", lab.user).as_bytes())
        .unwrap();
    assert!(chpasswd.wait().unwrap().success());
}

fn start_sshd(lab: &mut Lab) -> PathBuf {
    let key = lab.path("host_ed25519");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let config = lab.path("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nPidFile {}\nPasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication no\nUsePAM yes\nAllowUsers {}\n\
             LoginGraceTime 20\nMaxStartups 100\nLogLevel INFO\n",
            key.display(),
            lab.path("sshd.pid").display(),
            lab.user
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let log = lab.path("sshd.log");
    let sshd = in_ns(
        &lab.ns("a"),
        "/usr/sbin/sshd",
        &[
            "-D",
            "-E",
            log.to_str().unwrap(),
            "-f",
            config.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    lab.children.push(sshd);
    let agent = lab.ns("a");
    wait_for("sshd to listen", Duration::from_secs(10), || {
        tcp_connects(&agent, AGENT_TO_ATTACKER)
    });
    log
}

/// Starts `ssh-guard --follow` in the agent namespace; returns its stdout lines as they come.
fn start_guard(lab: &mut Lab, log: &Path) -> Arc<Mutex<Vec<String>>> {
    let policy = lab.path("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"name":"ssh","rules":[{{"type":"block_ip","config":{{"trigger":"brute_force","threshold":{THRESHOLD},"window":"10m","duration":"1h","scope":"host"}}}}]}}"#
        ),
    )
    .unwrap();
    let stderr = std::fs::File::create(lab.path("guard.stderr")).unwrap();
    let mut guard = in_ns(
        &lab.ns("a"),
        example_bin("ssh-guard").to_str().unwrap(),
        &[
            "--follow",
            "--from-start",
            "--poll-ms",
            "50",
            "--log",
            log.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--state-dir",
            lab.path("state").to_str().unwrap(),
            "--nft-table",
            &format!("sg_{}", lab.id),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(stderr)
    .spawn()
    .unwrap();
    let stdout = guard.stdout.take().unwrap();
    lab.children.push(guard);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn real_sshd_brute_force_is_blocked_and_the_right_password_still_works() {
    for tool in ["ip", "nft", "sshd", "ssh", "sshpass", "useradd"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "`{tool}` is missing: run `.ci/test` as root (it installs what the tests need), or apt-get install openssh-server sshpass nftables iproute2 passwd"
        );
    }
    let id = std::process::id();
    let mut lab = Lab {
        id,
        dir: tempfile::tempdir().unwrap(),
        user: format!("sg{id}"),
        user_created: false,
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    setup_network(&mut lab);
    setup_user(&mut lab);
    let log = start_sshd(&mut lab);
    let actions = start_guard(&mut lab, &log);
    let (agent, attacker, client) = (lab.ns("a"), lab.ns("x"), lab.ns("c"));

    // Before: the attacker reaches sshd, and the right password works from both sides.
    assert!(tcp_connects(&attacker, AGENT_TO_ATTACKER));
    assert_eq!(
        ssh_login(&client, &lab.user, AGENT_TO_CLIENT, PASSWORD).as_deref(),
        Some("logged-in\n")
    );

    // N - 1 failures: not blocked yet.
    for _ in 0..THRESHOLD - 1 {
        assert_eq!(
            ssh_login(&attacker, &lab.user, AGENT_TO_ATTACKER, "wrong-password"),
            None
        );
    }
    assert!(
        tcp_connects(&attacker, AGENT_TO_ATTACKER),
        "blocked before the threshold"
    );
    // The N-th failure blocks.
    assert_eq!(
        ssh_login(&attacker, "nosuchuser", AGENT_TO_ATTACKER, "wrong-password"),
        None
    );
    wait_for("the block_ip action", Duration::from_secs(20), || {
        actions
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(r#""action":"block_ip""#))
    });
    let printed = actions.lock().unwrap().clone();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(
        printed[0],
        format!(
            r#"{{"action":"block_ip","ip":"{ATTACKER}","duration":"1h","scope":"host","rule":0,"policyVersion":"v1","eventId":"{}"}}"#,
            serde_json::from_str::<serde_json::Value>(&printed[0]).unwrap()["eventId"]
                .as_str()
                .unwrap()
        )
    );
    let table = format!("sg_{}", lab.id);
    wait_for(
        "the address in the nftables set",
        Duration::from_secs(10),
        || {
            let listed = in_ns(&agent, "nft", &["list", "table", "inet", &table])
                .output()
                .unwrap();
            String::from_utf8_lossy(&listed.stdout).contains(ATTACKER)
        },
    );

    // After: the attacker's packets are dropped; the other client still logs in.
    assert!(
        !tcp_connects(&attacker, AGENT_TO_ATTACKER),
        "the attacker still reaches port 22"
    );
    assert_eq!(
        ssh_login(&client, &lab.user, AGENT_TO_CLIENT, PASSWORD).as_deref(),
        Some("logged-in\n")
    );
    let guard_stderr = std::fs::read_to_string(lab.path("guard.stderr")).unwrap();
    assert!(
        guard_stderr.contains(&format!("block_ip {ATTACKER}")),
        "{guard_stderr}"
    );
}
