//! The `switchboard` binary: parses the command line, starts the logger, and calls the
//! library. Every behaviour lives in the library, where tests and examples reach it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use switchboard::bench;
use switchboard::client::{connect, listen};
use switchboard::net::access::{AccessList, parse_cidr};
use switchboard::net::duration::{nonzero, parse_duration};
use switchboard::net::listener::ServerConfig;
use switchboard::net::splice;
use switchboard::net::stats::Stats;
use switchboard::roles::chat::{self, broker::ChatConfig};
use switchboard::roles::proxy::{
    self, ProxyConfig,
    header::Version,
    upstreams::{Balance, Upstreams},
};
use switchboard::roles::{discard, echo, hello, http, upper};
use switchboard::service::{Addrs, ServerArgs, Verbosity};
use switchboard::{Result, rt, service};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Small network services as actors: chat, echo, upper, hello, and nc-style tools"
)]
struct Cli {
    #[command(flatten)]
    verbosity: Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Multi-client chat: TCP (telnet, nc) and UDP users in the same rooms.
    Chat(ChatArgs),
    /// Echo server (RFC 862): every byte comes back exactly, over TCP and UDP.
    Echo(Transports),
    /// Upper-cases each line (TCP) or datagram (UDP), Unicode-aware.
    Upper(Transports),
    /// Sends a greeting to each TCP client and closes.
    Hello(HelloArgs),
    /// Transparent TCP proxy (telnet, HTTP, FTP control, ...) with failover and balancing.
    Proxy(ProxyArgs),
    /// Static-file HTTP/1.1 server: GET/HEAD, keep-alive, ranges, conditional requests.
    Http(HttpArgs),
    /// Discard (RFC 863): reads everything, answers nothing (a sink for benchmarks).
    Discard(Transports),
    /// Load generator: echo, stream, connect, chat or http against a running server.
    Bench(BenchArgs),
    /// Like nc: stdin to the socket and the socket to stdout, at the same time.
    Connect(ConnectArgs),
    /// Prints what arrives, from many clients at once, each line tagged with its sender.
    ///
    /// Each line is printed as `[PEER] LINE`. So that no sender can make a line look like
    /// another peer's on a terminal, control characters (but tab) and invalid UTF-8 are
    /// printed escaped: bytes as `\xNN` (CR is `\x0d`, ESC `\x1b`, DEL `\x7f`), C1
    /// controls and U+2028/U+2029 as `\u{85}`, `\u{2028}`; a backslash is printed as `\\`.
    Listen(ListenArgs),
}

#[derive(Args)]
struct Transports {
    /// TCP address to serve (given alone, only TCP is served).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<String>,
    /// UDP address to serve (given alone, only UDP is served).
    #[arg(long, value_name = "ADDR")]
    udp: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl Transports {
    /// Both on `default` when neither is named, else just the ones named.
    fn addrs(&self, default: &str) -> Addrs {
        match (&self.tcp, &self.udp) {
            (None, None) => Addrs::both(default),
            (tcp, udp) => Addrs {
                tcp: tcp.clone(),
                udp: udp.clone(),
            },
        }
    }
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    transports: Transports,
    /// Longest line accepted, in bytes; longer lines are dropped with an error.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_line: usize,
    /// Lines per second each client may send on average (0 = no limit).
    #[arg(long, value_name = "LINES", default_value_t = 20.0)]
    rate: f64,
    /// Lines each client may send at once before --rate applies.
    #[arg(long, value_name = "LINES", default_value_t = 40)]
    burst: u32,
    /// Lines queued for one TCP client before it is disconnected as too slow.
    #[arg(long, value_name = "LINES", default_value_t = 1024)]
    sendq: usize,
    /// Bytes queued for one TCP client before it is disconnected as too slow.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    sendq_bytes: usize,
    /// The most UDP users at once; more get `! server full`.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_udp_users: usize,
    /// The most UDP users from one source (an IPv4 address or an IPv6 /64); more get
    /// `! too many users from your address`. Default: a quarter of --max-udp-users, at
    /// most 256.
    #[arg(long, value_name = "N")]
    max_udp_users_per_ip: Option<usize>,
    /// Drop a UDP user after this long without a datagram.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    udp_idle: Duration,
    /// UDP joins a second for the whole server (more are refused: `! too many joins`;
    /// the client sends `/hello` again); short replies to unknown addresses are limited
    /// to twice this.
    #[arg(long, value_name = "JOINS", default_value_t = 50.0)]
    udp_join_rate: f64,
    /// UDP joins a second from one source (an IPv4 address or an IPv6 /64), so that one
    /// host cannot take every join --udp-join-rate allows.
    #[arg(long, value_name = "JOINS", default_value_t = 5.0)]
    udp_joins_per_ip: f64,
}

#[derive(Args)]
struct HelloArgs {
    /// TCP address to serve.
    #[arg(long, value_name = "ADDR", default_value = hello::DEFAULT_ADDR)]
    tcp: String,
    /// The greeting (a newline is added).
    #[arg(long, default_value = hello::DEFAULT_MESSAGE)]
    message: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
struct ConnectArgs {
    /// Where to connect: HOST:PORT.
    target: String,
    /// Use UDP: each stdin line is one datagram.
    #[arg(long)]
    udp: bool,
    /// UDP: keep printing replies this long after stdin ends.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    wait: Duration,
    /// TCP: give up connecting after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    connect_timeout: Duration,
}

#[derive(Args)]
struct HttpArgs {
    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value = http::DEFAULT_ADDR)]
    listen: String,
    /// Directory to serve (nothing outside it is ever served).
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: std::path::PathBuf,
    /// Close clients that have not sent a complete request head within this time (408).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    header_timeout: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BalanceArg {
    RoundRobin,
    LeastConn,
    First,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProxyVersion {
    V1,
    V2,
}

#[derive(Args)]
struct ProxyArgs {
    /// Address to accept clients on (repeatable: one proxy on several addresses, sharing
    /// its upstreams and limits).
    #[arg(long, value_name = "ADDR", default_value = proxy::DEFAULT_ADDR)]
    listen: Vec<String>,
    /// Where to forward: HOST:PORT (repeatable; resolved at every connect).
    #[arg(long, value_name = "HOST:PORT", required = true)]
    upstream: Vec<String>,
    /// How new sessions pick an upstream.
    #[arg(long, value_enum, default_value = "round-robin")]
    balance: BalanceArg,
    /// Give up one connect attempt to an upstream after this long (then try the next).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    connect_timeout: Duration,
    /// Skip an upstream that failed for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    backoff: Duration,
    /// After one side half-closes, close the session if nothing moves for this long (0 = never).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    fin_timeout: Duration,
    /// Write a PROXY protocol header (v1 text or v2 binary) to the upstream.
    #[arg(long, value_enum, value_name = "VERSION")]
    send_proxy: Option<ProxyVersion>,
    /// Read a PROXY protocol header (v1 or v2) from each client; only behind a balancer you trust.
    #[arg(long)]
    accept_proxy: bool,
    /// With --accept-proxy: only these peers may send headers (repeatable CIDR; default:
    /// anyone). --allow/--deny then judge the client each header names.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "accept_proxy")]
    proxy_from: Vec<IpNet>,
    /// With --accept-proxy: close clients that send no header within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    proxy_header_timeout: Duration,
    /// Log the traffic itself, tagged client->server / server->client (text, or hex; the
    /// first 1 KiB of each chunk read). Tapped sessions copy: the bytes must be seen.
    #[arg(long)]
    tap: bool,
    /// Move each direction's bytes socket -> pipe -> socket with splice(2), never through
    /// user space [default: on, on Linux].
    #[arg(long, overrides_with = "no_splice")]
    splice: bool,
    /// Copy each direction's bytes through the proxy instead of splicing them.
    #[arg(long, overrides_with = "splice")]
    no_splice: bool,
    /// With splice: every byte through the pipe, small messages too. By default a
    /// direction copies until a read fills the pipe, then splices that bulk (a small
    /// message costs less copied).
    #[arg(long, conflicts_with = "no_splice")]
    splice_always: bool,
    /// With splice: the pipe each direction holds its bytes in, at most (rounded up to a
    /// power of two pages; an unprivileged proxy is held to fs.pipe-max-size).
    #[arg(long, value_name = "BYTES", default_value_t = splice::PIPE_CAPACITY as u64,
        value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    splice_pipe: u64,
    /// Threads, each with its own listener (SO_REUSEPORT) and executor, so a session's
    /// actors never hop threads [default: one per core]; 0 = one shared executor, where
    /// idle threads steal work.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// On Ctrl-C or SIGTERM, let open sessions finish for this long (a second signal closes at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    drain: Duration,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    Echo,
    Stream,
    Connect,
    Chat,
    Http,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    mode: BenchMode,
    /// The server to load: HOST:PORT (loopback only is the polite choice).
    target: String,
    /// Concurrent connections (chat: clients).
    #[arg(long, default_value_t = 50)]
    conns: usize,
    /// Message size in bytes (stream: chunk size; chat: line length).
    #[arg(long, value_name = "BYTES", default_value_t = 512)]
    size: usize,
    /// How long to run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// echo/http: requests per second per connection (0 = as fast as possible);
    /// chat: lines per second per sender.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// chat: how many clients send.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// chat: all senders send at the same instants (bursts of one line each), instead of
    /// spreading their lines evenly over each period as independent people do.
    #[arg(long)]
    in_step: bool,
    /// echo: use UDP datagrams.
    #[arg(long)]
    udp: bool,
    /// stream: expect every byte back (an echo target).
    #[arg(long)]
    duplex: bool,
    /// stream: send a reproducible random payload and compare every byte that returns.
    #[arg(long)]
    verify: bool,
    /// http: the path to GET.
    #[arg(long, default_value = "/")]
    path: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ListenArgs {
    /// Address to listen on, e.g. 127.0.0.1:9000.
    addr: String,
    /// Listen for UDP datagrams instead of TCP connections.
    #[arg(long)]
    udp: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, result) = match cli.command {
        Command::Connect(args) => {
            // The client tools keep stdout for data: no logger, errors as one stderr line.
            let opts = connect::ConnectOptions {
                target: args.target,
                udp: args.udp,
                wait: args.wait,
                connect_timeout: args.connect_timeout,
            };
            ("connect", rt::block_on(connect::run(opts)))
        }
        Command::Listen(args) => ("listen", rt::block_on(listen::run(&args.addr, args.udp))),
        Command::Bench(args) => ("bench", rt::block_on(run_bench(args))),
        server => service::run_process(cli.verbosity, run_server(server)),
    };
    service::exit_code(&format!("switchboard {name}"), result)
}

async fn run_server(command: Command) -> (&'static str, Result<()>) {
    match command {
        Command::Chat(c) => ("chat", serve_chat(c).await),
        Command::Proxy(p) => ("proxy", serve_proxy(p).await),
        Command::Http(h) => ("http", serve_http(h).await),
        Command::Echo(t) => (
            "echo",
            service::run_role(echo::Echo, t.addrs(echo::DEFAULT_ADDR), t.server.config()).await,
        ),
        Command::Upper(t) => (
            "upper",
            service::run_role(
                upper::Upper,
                t.addrs(upper::DEFAULT_ADDR),
                t.server.config(),
            )
            .await,
        ),
        Command::Hello(h) => (
            "hello",
            service::run_role(
                hello::Hello::new(&h.message),
                Addrs::tcp(&h.tcp),
                h.server.config(),
            )
            .await,
        ),
        Command::Discard(t) => (
            "discard",
            service::run_role(
                discard::Discard,
                t.addrs(discard::DEFAULT_ADDR),
                t.server.config(),
            )
            .await,
        ),
        Command::Connect(_) | Command::Listen(_) | Command::Bench(_) => {
            unreachable!("client commands are run by main")
        }
    }
}

async fn serve_chat(args: ChatArgs) -> Result<()> {
    if args.max_line == 0
        || args.sendq == 0
        || args.sendq_bytes == 0
        || args.burst == 0
        || args.rate.is_nan()
        || args.rate < 0.0
    {
        return Err(
            "--max-line, --sendq, --sendq-bytes and --burst must be at least 1, and --rate 0 or more".into(),
        );
    }
    if !args.udp_join_rate.is_finite() || args.udp_join_rate <= 0.0 {
        return Err("--udp-join-rate must be a number above 0".into());
    }
    if !args.udp_joins_per_ip.is_finite() || args.udp_joins_per_ip <= 0.0 {
        return Err("--udp-joins-per-ip must be a number above 0".into());
    }
    let addrs = args.transports.addrs(chat::DEFAULT_ADDR);
    let bound = service::bind(addrs.tcp.as_deref(), addrs.udp.as_deref()).await?;
    let server = (*args.transports.server.config()).clone();
    let config = ChatConfig {
        max_line: args.max_line,
        rate: args.rate,
        burst: args.burst,
        sendq: args.sendq,
        sendq_bytes: args.sendq_bytes,
        udp_idle: args.udp_idle.max(Duration::from_millis(100)),
        max_udp_users: args.max_udp_users,
        max_udp_users_per_ip: args
            .max_udp_users_per_ip
            .unwrap_or((args.max_udp_users / 4).clamp(1, 256)),
        udp_join_rate: args.udp_join_rate,
        udp_joins_per_ip: args.udp_joins_per_ip,
        udp_challenge_rate: (2.0 * args.udp_join_rate).max(10.0),
    };
    let stats = Stats::new();
    let serve_stats = stats.clone();
    service::run_until_signal("chat", stats, service::DEFAULT_DRAIN, move |shutdown| {
        chat::run(bound.tcp, bound.udp, server, config, serve_stats, shutdown)
    })
    .await
}

async fn run_bench(args: BenchArgs) -> Result<()> {
    use std::io::IsTerminal;
    let target = switchboard::client::resolve_target(&args.target).await?[0];
    if !target.ip().is_loopback() {
        switchboard::note!(
            "switchboard bench: note: {target} is not a loopback address; load only machines you run"
        );
    }
    let opts = bench::BenchOptions {
        mode: match args.mode {
            BenchMode::Echo => bench::Mode::Echo,
            BenchMode::Stream => bench::Mode::Stream,
            BenchMode::Connect => bench::Mode::Connect,
            BenchMode::Chat => bench::Mode::Chat,
            BenchMode::Http => bench::Mode::Http,
        },
        target,
        conns: args.conns,
        size: args.size,
        duration: args.duration,
        rate: args.rate,
        udp: args.udp,
        duplex: args.duplex,
        verify: args.verify,
        senders: args.senders,
        in_step: args.in_step,
        path: args.path,
        json: args.json,
        progress: std::io::stderr().is_terminal() && !args.json,
    };
    bench::run(opts).await
}

/// Whether the proxy splices unless told `--no-splice`: on Linux, where `splice(2)` is.
const SPLICE_BY_DEFAULT: bool = cfg!(target_os = "linux");

async fn serve_proxy(args: ProxyArgs) -> Result<()> {
    let balance = match args.balance {
        BalanceArg::RoundRobin => Balance::RoundRobin,
        BalanceArg::LeastConn => Balance::LeastConn,
        BalanceArg::First => Balance::First,
    };
    let config = ProxyConfig {
        upstreams: Upstreams::new(args.upstream, balance, args.backoff),
        connect_timeout: args.connect_timeout.max(Duration::from_millis(1)),
        fin_timeout: nonzero(args.fin_timeout),
        send_proxy: args.send_proxy.map(|v| match v {
            ProxyVersion::V1 => Version::V1,
            ProxyVersion::V2 => Version::V2,
        }),
        accept_proxy: args
            .accept_proxy
            .then_some(args.proxy_header_timeout.max(Duration::from_millis(1))),
        tap: args.tap,
        splice: (!args.no_splice && (args.splice || SPLICE_BY_DEFAULT))
            .then_some(args.splice_pipe as usize),
        splice_always: args.splice_always,
    };
    let server = ServerConfig {
        proxy_from: AccessList::new(args.proxy_from, vec![]),
        ..(*args.server.config()).clone()
    };
    for (i, addr) in args.listen.iter().enumerate() {
        // Port 0 twice is two ports the kernel picks.
        if args.listen[..i].contains(addr) && !addr.ends_with(":0") {
            return Err(format!("--listen {addr} is given twice").into());
        }
    }
    let stats = Stats::new();
    let serve_stats = stats.clone();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        switchboard::rt::set_connection_threads(0);
        let mut listeners = Vec::with_capacity(args.listen.len());
        for addr in &args.listen {
            let bound = service::bind(Some(addr), None).await?;
            listeners.push(bound.tcp.expect("bound a TCP address"));
        }
        return service::run_until_signal_closing(
            "proxy",
            stats,
            args.drain,
            move |shutdown, close| {
                let server = ServerConfig {
                    close_now: Some(close),
                    ..server
                };
                proxy::run_many(listeners, server, config, serve_stats, shutdown)
            },
        )
        .await;
    }
    // One listener per address on every thread.
    let mut listeners: Vec<Vec<std::net::TcpListener>> =
        (0..threads.max(1)).map(|_| Vec::new()).collect();
    for addr in &args.listen {
        let bound = service::bind_reuseport(addr, threads).await?;
        for (thread, listener) in listeners.iter_mut().zip(bound) {
            thread.push(listener);
        }
    }
    service::run_until_signal_closing(
        "proxy",
        stats,
        args.drain,
        move |shutdown, close| async move {
            let server = ServerConfig {
                close_now: Some(close),
                ..server
            };
            if let Err(e) =
                proxy::run_pinned(listeners, server, config, serve_stats, shutdown).await
            {
                log::error!(error = e.to_string().as_str(); "proxy: could not start its threads");
            }
        },
    )
    .await
}

async fn serve_http(args: HttpArgs) -> Result<()> {
    let config = http::HttpConfig::new(
        &args.root,
        args.header_timeout.max(Duration::from_millis(1)),
    )?;
    let bound = service::bind(Some(&args.listen), None).await?;
    let listener = bound.tcp.expect("bound a TCP address");
    log::info!(root = config.root.display().to_string().as_str(); "http: serving files");
    let server = (*args.server.config()).clone();
    let stats = Stats::new();
    let serve_stats = stats.clone();
    // At the end of the drain, responses still being sent are cut (and logged as such).
    service::run_until_signal_closing(
        "http",
        stats,
        service::DEFAULT_DRAIN,
        move |shutdown, close| {
            let server = ServerConfig {
                close_now: Some(close),
                ..server
            };
            http::run(listener, server, config, serve_stats, shutdown)
        },
    )
    .await
}
