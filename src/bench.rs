//! `switchboard bench`: a load generator for every role, measuring on the same runtime
//! the servers use.
//!
//! Every mode runs its connections as tasks, stops by itself after `--duration` (plus a
//! bounded grace period to collect what is in flight), checks what comes back, and prints
//! a table (or `--json`). A target that refuses or misbehaves is a clear error, not a hang.
//!
//! With `--tls` (echo, stream, http, connect) every connection is opened through a
//! [`Dialer`]: TCP, then a full TLS handshake (no session resumption), verified as
//! `connect --tls` verifies; the first connection that fails says why and ends the run.
//!
//! Try it: `switchboard echo & switchboard bench echo 127.0.0.1:7007 --conns 50 --size 512`.

pub mod chat;
pub mod connect;
pub mod echo;
pub mod http;
mod many;
pub mod stream;

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use futures_rustls::rustls;
use futures_rustls::rustls::pki_types::ServerName;

use crate::Result;
use crate::client::TlsArgs;
use crate::net::describe::describe;
use crate::net::duration::parse_duration;
use crate::net::stream::Stream;
use crate::net::tls::{self, Verify};
use crate::rt;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Ping-pong SIZE-byte messages, one in flight per connection.
    Echo,
    /// Push SIZE-byte chunks as fast as the target takes them.
    Stream,
    /// Open and close connections (with --tls: a full handshake each, no resumption).
    Connect,
    /// Many clients in one room; deliveries and their latency (no --tls).
    Chat,
    /// Keep-alive GETs of --path (with --tls: ALPN http/1.1).
    Http,
}

/// The command line of `bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// The server to load: HOST:PORT (loopback only is the polite choice).
    #[arg(value_parser = parse_target)]
    pub target: Target,
    /// Concurrent connections (chat: clients).
    #[arg(long, default_value_t = 50)]
    pub conns: usize,
    /// Message size in bytes (stream: chunk size; chat: line length).
    #[arg(long, value_name = "BYTES", default_value_t = 512)]
    pub size: usize,
    /// How long to run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// echo/http: requests per second per connection (0 = as fast as possible);
    /// chat: lines per second per sender.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// echo: use UDP datagrams.
    #[arg(long)]
    pub udp: bool,
    /// stream: expect every byte back (an echo target).
    #[arg(long)]
    pub duplex: bool,
    /// stream: send a reproducible random payload and compare every byte that returns.
    #[arg(long)]
    pub verify: bool,
    /// chat: how many clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// chat: the nodes of a cluster (`chat --cluster`): the clients are spread over
    /// TARGET and these, round-robin (TARGET named again here counts once), and the
    /// latency of deliveries from one node to another is reported apart.
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',', value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// chat: the clients are WebSocket users of `chat --web` (TARGET is the web
    /// address): one text frame per line each way.
    #[arg(long)]
    pub web: bool,
    /// chat: all senders send at the same instants (bursts of one line each), instead of
    /// spreading their lines evenly over each period as independent people do.
    #[arg(long)]
    pub in_step: bool,
    /// http: the path to GET.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// echo, stream, http, connect over TLS. connect: every connection is a new full
    /// handshake (no session resumption), and the latency is connect plus handshake.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print a progress line every second (on a terminal; set by the binary).
    #[arg(skip)]
    pub progress: bool,
}

/// What `bench` loads: the first address `HOST:PORT` resolves to, and `HOST:PORT` as
/// typed (whose host is the name TLS verifies unless `--sni` says another).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub typed: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// `HOST:PORT` as a target: the first address it resolves to.
fn parse_target(target: &str) -> std::result::Result<Target, String> {
    use std::net::ToSocketAddrs;
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    Ok(Target {
        addr,
        typed: target.to_owned(),
    })
}

/// The most any run may take beyond `--duration` to collect what is in flight.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long to wait on any one reply before calling the target broken.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// From this share of the machine's CPU on, the report warns that the load generator may
/// be what limits the figure.
pub const BUSY_LOADGEN: f64 = 0.45;

/// CPU time (user + system) this process has used, all threads together.
fn cpu_time() -> Duration {
    use rustix::time::{ClockId, clock_gettime};
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub mode: &'static str,
    pub conns: usize,
    pub elapsed: Duration,
    /// Operations completed (round trips, connections, deliveries, requests).
    pub ops: u64,
    pub op_name: &'static str,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Latency in microseconds, where the mode measures one.
    pub latency: Option<Histogram<u64>>,
    /// Extra counters: ("lost", n), ("duplicated", n), ("status 200", n), ...
    pub counts: Vec<(String, u64)>,
    /// Problems seen (wrong bytes, errors), each once with a count.
    pub errors: Vec<(String, u64)>,
    /// The share of the machine's CPU the load generator itself used (0 to 1).
    pub loadgen_cpu: f64,
}

impl Report {
    pub fn new(mode: &'static str, op_name: &'static str, conns: usize) -> Self {
        Report {
            mode,
            conns,
            elapsed: Duration::ZERO,
            ops: 0,
            op_name,
            bytes_sent: 0,
            bytes_received: 0,
            latency: None,
            counts: Vec::new(),
            errors: Vec::new(),
            loadgen_cpu: 0.0,
        }
    }

    /// Adds `n` to the named counter.
    pub fn count(&mut self, name: &str, n: u64) {
        add_to(&mut self.counts, name, n);
    }

    /// Records a problem.
    pub fn error(&mut self, what: &str) {
        add_to(&mut self.errors, what, 1);
    }

    /// Folds another connection's part of the run into this one.
    pub fn merge(&mut self, other: Part) {
        self.ops += other.ops;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        if let Some(h) = other.latency {
            match &mut self.latency {
                Some(mine) => mine.add(&h).expect("histograms share bounds"),
                None => self.latency = Some(h),
            }
        }
        for (k, v) in other.counts {
            add_to(&mut self.counts, &k, v);
        }
        for (k, v) in other.errors {
            add_to(&mut self.errors, &k, v);
        }
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mode        {} ({} connections, {:.2}s)",
            self.mode, self.conns, secs
        );
        let _ = writeln!(
            out,
            "{:<11} {} ({:.0}/s)",
            self.op_name,
            self.ops,
            self.rate()
        );
        if self.bytes_sent + self.bytes_received > 0 {
            let _ = writeln!(
                out,
                "throughput  sent {:.1} MB/s, received {:.1} MB/s",
                self.bytes_sent as f64 / secs / 1e6,
                self.bytes_received as f64 / secs / 1e6
            );
        }
        if let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            let _ = writeln!(
                out,
                "latency µs  p50 {}  p99 {}  p99.9 {}  max {}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        for (k, v) in &self.counts {
            let _ = writeln!(out, "{k:<11} {v}");
        }
        let _ = writeln!(
            out,
            "loadgen cpu {:.0}% of the machine",
            self.loadgen_cpu * 100.0
        );
        if self.loadgen_cpu >= BUSY_LOADGEN {
            let _ = writeln!(
                out,
                "NOTE        the load generator itself used much of the CPU: the figure may be its limit, not the target's"
            );
        }
        for (k, v) in &self.errors {
            let _ = writeln!(out, "ERROR       {k} (x{v})");
        }
        out
    }

    /// The report as one JSON object, for scripts.
    pub fn json(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "{{\"mode\":\"{}\",\"conns\":{},\"seconds\":{:.3},\"ops\":{},\"ops_per_sec\":{:.1},\"bytes_sent\":{},\"bytes_received\":{},\"mb_per_sec_sent\":{:.2},\"mb_per_sec_received\":{:.2}",
            self.mode,
            self.conns,
            secs,
            self.ops,
            self.rate(),
            self.bytes_sent,
            self.bytes_received,
            self.bytes_sent as f64 / secs / 1e6,
            self.bytes_received as f64 / secs / 1e6
        );
        if let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            let _ = write!(
                out,
                ",\"latency_us\":{{\"p50\":{},\"p99\":{},\"p99_9\":{},\"max\":{}}}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        let obj = |pairs: &[(String, u64)]| {
            let items: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("\"{}\":{v}", k.replace('"', "'")))
                .collect();
            format!("{{{}}}", items.join(","))
        };
        let _ = write!(
            out,
            ",\"loadgen_cpu_share\":{:.3},\"counts\":{},\"errors\":{}}}",
            self.loadgen_cpu,
            obj(&self.counts),
            obj(&self.errors)
        );
        out
    }
}

fn add_to(list: &mut Vec<(String, u64)>, name: &str, n: u64) {
    match list.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v += n,
        None => list.push((name.to_string(), n)),
    }
}

/// One connection's share of a run, merged into the [`Report`] at the end.
#[derive(Debug, Default)]
pub struct Part {
    pub ops: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency: Option<Histogram<u64>>,
    pub counts: Vec<(String, u64)>,
    pub errors: Vec<(String, u64)>,
}

impl Part {
    /// A part that records latencies.
    pub fn timed() -> Self {
        Part {
            latency: Some(histogram()),
            ..Default::default()
        }
    }
    pub fn record(&mut self, latency: Duration) {
        if let Some(h) = &mut self.latency {
            h.saturating_record(latency.as_micros() as u64);
        }
    }
    pub fn error(&mut self, what: impl Into<String>) {
        add_to(&mut self.errors, &what.into(), 1);
    }
    pub fn count(&mut self, name: &str, n: u64) {
        add_to(&mut self.counts, name, n);
    }
}

/// A latency histogram from 1 µs to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Operations done so far, for the progress line.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Operations done so far in this run.
    pub fn total(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(opts: BenchOptions) -> Result<()> {
    if opts.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    if opts.web && opts.mode != Mode::Chat {
        return Err("--web is for bench chat (WebSocket users of chat --web)".into());
    }
    if !opts.targets.is_empty() && opts.mode != Mode::Chat {
        return Err("--targets is for bench chat (clients spread over a cluster's nodes)".into());
    }
    if opts.tls.tls && opts.mode == Mode::Chat {
        return Err("bench chat does not speak TLS (its receivers read raw sockets with epoll): load the chat's plain port".into());
    }
    let progress = Progress::default();
    let ticker = opts.progress.then(|| {
        let p = progress.clone();
        let name = format!("{:?}", opts.mode).to_lowercase();
        rt::spawn(async move {
            let start = Instant::now();
            let mut last = 0;
            loop {
                rt::sleep(Duration::from_secs(1)).await;
                let now = p.total();
                // (Not `eprint!`: a closed stderr must not panic the run.)
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!(
                        "\r{name}: {:>5.0}s  {:>12} ops/s   ",
                        start.elapsed().as_secs_f64(),
                        now - last
                    ),
                );
                last = now;
            }
        })
    });
    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    let mut report = match opts.mode {
        Mode::Echo => echo::run(&opts, &progress).await?,
        Mode::Stream => stream::run(&opts, &progress).await?,
        Mode::Connect => connect::run(&opts, &progress).await?,
        Mode::Chat => chat::run(&opts, &progress).await?,
        Mode::Http => http::run(&opts, &progress).await?,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report.loadgen_cpu = (cpu_time() - cpu_before).as_secs_f64()
        / (wall_before.elapsed().as_secs_f64() * cores).max(1e-9);
    if let Some(t) = ticker {
        t.cancel().await;
        crate::note!();
    }
    if opts.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.ops == 0 {
        return Err(format!("no {} completed against {}", report.op_name, opts.target).into());
    }
    Ok(())
}

/// How every connection of a run is opened: TCP with TCP_NODELAY, and with `--tls` a full
/// handshake over it. Cheap to clone (one per task).
#[derive(Clone)]
pub struct Dialer {
    target: SocketAddr,
    tls: Option<DialTls>,
}

#[derive(Clone)]
struct DialTls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    verify: Verify,
}

impl Dialer {
    /// The dialer for `opts`, offering `alpn` under TLS. The TLS settings are read here,
    /// so a bad `--ca` or `--sni` is an error before any connection. Session resumption is
    /// off: every connection pays a full handshake, which is what `connect` measures.
    pub fn new(opts: &BenchOptions, alpn: &[&[u8]]) -> Result<Dialer> {
        let tls = if opts.tls.tls {
            let verify = opts.tls.verify();
            let mut config = (*tls::client_config(&verify)?).clone();
            config.resumption = rustls::client::Resumption::disabled();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Some(DialTls {
                config: Arc::new(config),
                name: tls::server_name(&opts.target.typed, opts.tls.sni.as_deref())?,
                verify,
            })
        } else {
            None
        };
        Ok(Dialer {
            target: opts.target.addr,
            tls,
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// One connection, ready for the mode's bytes (its handshake done, under TLS); an
    /// error is a phrase saying why.
    pub async fn open(&self) -> Result<Stream> {
        let stream = match rt::timeout(REPLY_TIMEOUT, Stream::connect(self.target)).await {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(describe(&e).into()),
            None => return Err("connect timed out".into()),
        };
        stream.socket().set_nodelay(true)?;
        let Some(t) = &self.tls else {
            return Ok(stream);
        };
        let handshake = tls::connect(
            t.config.clone(),
            t.name.clone(),
            stream,
            self.target,
            REPLY_TIMEOUT,
        );
        match handshake.await {
            Ok((stream, _)) => Ok(stream),
            Err(e) => Err(tls::with_hint(e, &t.verify)),
        }
    }

    /// Opens `n` connections one after another; the first that fails ends it, with why.
    pub async fn open_all(&self, n: usize) -> Result<Vec<Stream>> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            match self.open().await {
                Ok(s) => conns.push(s),
                Err(why) => {
                    return Err(
                        format!("connection {} of {n} to {}: {why}", i + 1, self.target).into(),
                    );
                }
            }
        }
        Ok(conns)
    }
}

/// Opens `n` plain TCP connections to `target` (with TCP_NODELAY); a refusal is an error.
pub async fn open_all(target: SocketAddr, n: usize) -> Result<Vec<Stream>> {
    Dialer { target, tls: None }.open_all(n).await
}

/// Waits for every task and merges their parts.
pub async fn collect(
    mut report: Report,
    tasks: Vec<rt::JoinHandle<Part>>,
    started: Instant,
) -> Report {
    for t in tasks {
        report.merge(t.await);
    }
    if report.elapsed.is_zero() {
        report.elapsed = started.elapsed();
    }
    report
}
