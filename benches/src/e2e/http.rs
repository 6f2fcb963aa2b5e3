//! nginx (Debian's `nginx-light`) in the pods and `wrk` in the client, for HTTP latency.
//!
//! Every nginx gets a configuration, pid file, temp directories and logs of its own under the
//! bench's scratch directory (nothing in `/etc/nginx` or `/var` is read or written), runs in
//! the foreground as one process (`master_process off`) and is killed by its guard.

use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use onehop_testkit::{
    Topology,
    netns::{ChildGuard, command_in, in_netns, spawn_in},
};

/// Starts nginx on `port` in every pod; each answers `200 <pod name>`.
pub fn start_nginx(topo: &Topology, port: u16, scratch: &Path) -> Result<Vec<ChildGuard>> {
    let mut out = Vec::new();
    for pod in topo.pods() {
        let dir = scratch.join(format!("nginx-{}", pod.name()));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             server {{ listen {}:{port} backlog=4096; location / {{ return 200 \"{}\\n\"; }} }}\n}}\n",
            pod.ip(),
            pod.name()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = command_in(pod.ns(), "nginx");
        cmd.arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        out.push(spawn_in(pod.ns(), cmd).context("starting nginx (Debian package nginx-light)")?);
    }
    // Ready when each answers a TCP connect from its own namespace.
    for pod in topo.pods() {
        let addr = SocketAddr::V4(SocketAddrV4::new(pod.ip(), port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = in_netns(pod.ns(), || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("nginx in {} did not listen on {addr}", pod.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(out)
}

/// One wrk result.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("50%"), Some(v)) => r.p50_us = parse_latency(v).context("p50")?,
            (Some("99%"), Some(v)) => r.p99_us = parse_latency(v).context("p99")?,
            (Some("Requests/sec:"), Some(v)) => r.requests_per_s = v.parse()?,
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0": reads are EOFs of closed
            // connections, which wrk may count with Connection: close; the others are real.
            for part in rest.split(',') {
                let mut kv = part.split_whitespace();
                if let (Some(k), Some(v)) = (kv.next(), kv.next())
                    && k != "read"
                {
                    r.errors += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    if r.requests_per_s <= 0.0 || r.p50_us <= 0.0 {
        bail!("could not parse wrk output:\n{out}");
    }
    Ok(r)
}

/// Runs `wrk` from the client against `addr` for `secs` seconds, keep-alive off.
pub fn wrk(topo: &Topology, addr: SocketAddrV4, secs: u32, conns: u32) -> Result<WrkResult> {
    let out = command_in(topo.client().ns(), "wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "2s",
        ])
        .args(["--latency", "-H", "Connection: close"])
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let out = "Running 2s test @ http://192.168.50.200:80/\n  1 threads and 8 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   310.12us  100.00us   2.00ms   90.00%\n\
  Latency Distribution\n     50%  290.00us\n     75%  320.00us\n     90%  400.00us\n     99%    1.20ms\n\
  20000 requests in 2.00s, 3.00MB read\n  Socket errors: connect 1, read 5, write 0, timeout 2\n\
Requests/sec:  10000.50\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(out).unwrap();
        assert!((r.p50_us - 290.0).abs() < 1e-9);
        assert!((r.p99_us - 1200.0).abs() < 1e-9);
        assert!((r.requests_per_s - 10000.5).abs() < 1e-9);
        assert_eq!(r.errors, 3, "read errors are not counted");
    }
}
