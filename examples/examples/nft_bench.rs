//! Benchmark of the nftables firewall: blocks applied per second in batches, and the kernel's
//! lookup cost with 10 versus 100,000 blocked addresses (sets, not a rule per address).
//!
//! Runs as root; creates two network namespaces joined by a veth pair and deletes them at the
//! end. `cargo run --release -p examples --example nft_bench -- --help`
//!
//! Method for the lookup cost: a client in the "attacker" namespace opens and closes TCP
//! connections to a listener in the "agent" namespace, from an address that is not blocked, so
//! every SYN and ACK goes through the firewall's input chain and misses the set. The connect
//! latency is measured with 10 blocked addresses and with 100,000 (the set is a hash: the cost
//! should not move), and, for contrast, with a chain of N `ip saddr X drop` rules, which the
//! kernel walks one by one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use policy_engine::PolicyDuration;
use policy_engine::executor::{Firewall, FirewallConfig};

#[derive(Parser)]
#[command(about = "Benchmark nftables blocks: throughput and lookup cost")]
struct Args {
    /// Addresses blocked in the throughput run and in the large-set run.
    #[arg(long, default_value_t = 100_000)]
    blocks: usize,
    /// Addresses per `nft -f -` batch in the throughput run.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// TCP connections per latency measurement.
    #[arg(long, default_value_t = 3_000)]
    connects: usize,
    /// Rules in the rule-per-address baseline (0 skips it).
    #[arg(long, default_value_t = 5_000)]
    rules: usize,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// Internal: listen on `[::]:PORT` until killed (run inside the agent namespace).
    Listen { port: u16 },
    /// Internal: connect COUNT times to TARGET and print the latencies in nanoseconds.
    Connect { target: SocketAddr, count: usize },
}

const AGENT: &str = "192.0.2.1";
const ATTACKER: &str = "192.0.2.2";
const PORT: u16 = 7000;

fn main() -> Result<()> {
    let args = Args::parse();
    match args.role {
        Some(Role::Listen { port }) => listen(port),
        Some(Role::Connect { target, count }) => connect(target, count),
        None => bench(&args),
    }
}

fn listen(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("::", port))?;
    println!("ready");
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

fn connect(target: SocketAddr, count: usize) -> Result<()> {
    let mut out = String::new();
    for _ in 0..count {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        out.push_str(&start.elapsed().as_nanos().to_string());
        out.push('\n');
        drop(stream);
    }
    print!("{out}");
    Ok(())
}

/// Two namespaces joined by a veth pair, deleted on drop, with a listener in the agent one.
struct Lab {
    agent: String,
    attacker: String,
    state_dir: std::path::PathBuf,
    listener: Option<Child>,
}

impl Lab {
    fn new() -> Result<Self> {
        let id = std::process::id();
        let mut lab = Self {
            agent: format!("pe-bench-agent-{id}"),
            attacker: format!("pe-bench-attacker-{id}"),
            state_dir: std::env::temp_dir().join(format!("pe-bench-state-{id}")),
            listener: None,
        };
        run(&["ip", "netns", "add", &lab.agent])?;
        run(&["ip", "netns", "add", &lab.attacker])?;
        run(&[
            "ip",
            "-n",
            &lab.agent,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &lab.attacker,
        ])?;
        for (ns, ip) in [(&lab.agent, AGENT), (&lab.attacker, ATTACKER)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "veth0",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", ns, "link", "set", "veth0", "up"])?;
        }
        let exe = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.agent])
            .arg(&exe)
            .args(["listen", &PORT.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        if let Some(stdout) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)?;
        }
        lab.listener = Some(child);
        if ready.trim() != "ready" {
            bail!("the listener did not start");
        }
        Ok(lab)
    }

    fn nft_command(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.agent, "nft"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Connect latencies from the attacker namespace, in microseconds, sorted.
    fn latencies(&self, count: usize) -> Result<Vec<f64>> {
        let exe = std::env::current_exe()?;
        let out = Command::new("ip")
            .args(["netns", "exec", &self.attacker])
            .arg(&exe)
            .args(["connect", &format!("{AGENT}:{PORT}"), &count.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.parse::<f64>().ok())
            .map(|ns| ns / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        Ok(v)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.listener.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.agent])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.attacker])
            .status();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn run(args: &[&str]) -> Result<()> {
    let (program, rest) = args.split_first().context("empty command")?;
    let status = Command::new(program).args(rest).status()?;
    if !status.success() {
        bail!("{args:?} failed with {status}");
    }
    Ok(())
}

/// `n` distinct addresses, alternating IPv4 (198.18.0.0/15) and IPv6 (2001:db8:ffff::/48).
fn addresses(n: usize, offset: usize) -> Vec<IpAddr> {
    (offset..offset + n)
        .map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0xC612_0000 + i / 2))
            } else {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xffff,
                    0,
                    0,
                    0,
                    (i >> 16) as u16,
                    i as u16,
                ))
            }
        })
        .collect()
}

/// The median of sorted latencies.
fn median(v: &[f64]) -> f64 {
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn summary(label: &str, v: &[f64]) {
    let pick = |q: f64| {
        let index = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(index).copied().unwrap_or(f64::NAN)
    };
    // A rare SYN retransmission (1 s) would swamp a plain mean: average the fastest 99%.
    let kept = v.get(..v.len() * 99 / 100).unwrap_or(v);
    let mean = kept.iter().sum::<f64>() / kept.len().max(1) as f64;
    println!(
        "{label:<40} p50 {:7.1} us  p90 {:7.1} us  p99 {:7.1} us  mean(fastest 99%) {mean:7.1} us  ({} connects)",
        pick(0.5),
        pick(0.9),
        pick(0.99),
        v.len()
    );
}

fn bench(args: &Args) -> Result<()> {
    let lab = Lab::new()?;
    let mut config = FirewallConfig::new(&lab.state_dir);
    config.command = lab.nft_command();
    let mut firewall = Firewall::open(config)?;
    let hour: PolicyDuration = "1h".parse()?;

    // Warm up the path, then latency with a small set.
    lab.latencies(200)?;
    let small: Vec<(IpAddr, PolicyDuration)> =
        addresses(10, 0).into_iter().map(|ip| (ip, hour)).collect();
    firewall.block_many(&small)?;
    let with_10 = lab.latencies(args.connects)?;

    // Throughput: the rest of the addresses in batches.
    let all = addresses(args.blocks, 10);
    let start = Instant::now();
    for chunk in all.chunks(args.batch.max(1)) {
        let batch: Vec<(IpAddr, PolicyDuration)> = chunk.iter().map(|&ip| (ip, hour)).collect();
        firewall.block_many(&batch)?;
    }
    let elapsed = start.elapsed();
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    println!(
        "blocked {} addresses in batches of {} in {:.2} s: {:.0} addresses/s (nft transaction + journal fsync per batch)",
        all.len(),
        args.batch,
        elapsed.as_secs_f64(),
        rate
    );
    examples::figure(
        &format!("nftables blocks, batches of {}", args.batch),
        format!("{rate:.0} IPs/s"),
    );

    // Re-blocking every address (extension path: add, delete, add) in one batch.
    let start = Instant::now();
    let again: Vec<(IpAddr, PolicyDuration)> = all
        .iter()
        .map(|&ip| (ip, "2h".parse::<PolicyDuration>().unwrap_or(hour)))
        .collect();
    firewall.block_many(&again)?;
    println!(
        "extended all {} blocks in one batch in {:.2} s",
        all.len(),
        start.elapsed().as_secs_f64()
    );

    let with_all = lab.latencies(args.connects)?;
    println!("\nTCP connect latency from a non-blocked address (SYN and ACK traverse the chain):");
    summary("set with 10 addresses", &with_10);
    summary(&format!("set with {} addresses", all.len() + 10), &with_all);
    examples::figure(
        "nftables set lookup (TCP connect p50)",
        format!(
            "{:.1} us with 10 elements, {:.1} us with {}",
            median(&with_10),
            median(&with_all),
            all.len() + 10
        ),
    );

    if args.rules > 0 {
        firewall.remove_table()?;
        let mut script = String::from(
            "add table inet bench_rules\nadd chain inet bench_rules input { type filter hook input priority -10; policy accept; }\n",
        );
        for ip in addresses(args.rules * 2, 10)
            .into_iter()
            .filter(IpAddr::is_ipv4)
        {
            script.push_str(&format!(
                "add rule inet bench_rules input ip saddr {ip} drop\n"
            ));
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.agent, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, script.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("loading the rule baseline failed");
        }
        let with_rules = lab.latencies(args.connects)?;
        summary(
            &format!("baseline: {} rules, one per address", args.rules),
            &with_rules,
        );
    }
    Ok(())
}
