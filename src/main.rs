//! The `switchboard` binary: parses the command line, starts the logger, and calls the
//! library. Every behaviour lives in the library, where tests and examples reach it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use switchboard::bench::{self, BenchOptions};
use switchboard::client::{TlsArgs, connect, listen};
use switchboard::net::duration::parse_duration;
use switchboard::net::listener::{Listeners, ServerConfig};
use switchboard::net::stats::Stats;
use switchboard::options::{ChatArgs, HelloArgs, HttpArgs, ProxyArgs, Transports};
use switchboard::role::NewSession;
use switchboard::roles::chat;
use switchboard::roles::proxy;
use switchboard::roles::{discard, echo, hello, http, upper};
use switchboard::serve::{self, Server};
use switchboard::service::{self, Addrs, ServerArgs, Verbosity};
use switchboard::{Result, rt};

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
    Chat(Box<ChatArgs>),
    /// Echo server (RFC 862): every byte comes back exactly, over TCP and UDP.
    Echo(Transports),
    /// Upper-cases each line (TCP) or datagram (UDP), Unicode-aware.
    Upper(Transports),
    /// Sends a greeting to each TCP client and closes.
    Hello(HelloArgs),
    /// Transparent TCP proxy (telnet, HTTP, FTP control, ...) with failover and balancing.
    Proxy(Box<ProxyArgs>),
    /// Static-file HTTP/1.1 server: GET/HEAD, keep-alive, ranges, conditional requests.
    Http(HttpArgs),
    /// Discard (RFC 863): reads everything, answers nothing (a sink for benchmarks).
    Discard(Transports),
    /// Load generator: echo, stream, connect, chat or http against a running server.
    Bench(BenchOptions),
    #[command(flatten)]
    Serve(serve::Command),
    /// Like nc: stdin to the socket and the socket to stdout, at the same time.
    ///
    /// With --tls, -v prints the TLS version and the server certificate's subject on
    /// stderr.
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
struct ConnectArgs {
    /// Where to connect: HOST:PORT.
    target: String,
    /// Use UDP: each stdin line is one datagram.
    #[arg(long)]
    udp: bool,
    /// UDP: keep printing replies this long after stdin ends.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    wait: Duration,
    /// TCP: give up connecting (and, with --tls, the handshake) after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    connect_timeout: Duration,
    #[command(flatten)]
    tls: TlsArgs,
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
                tls: args.tls.tls.then(|| connect::TlsOptions {
                    verify: args.tls.verify(),
                    sni: args.tls.sni,
                    verbose: cli.verbosity.level() >= log::LevelFilter::Debug,
                }),
            };
            ("connect", rt::block_on(connect::run(opts)))
        }
        Command::Listen(args) => ("listen", rt::block_on(listen::run(&args.addr, args.udp))),
        Command::Bench(args) => ("bench", rt::block_on(run_bench(args))),
        Command::Serve(command) => return Server::new().run(command, cli.verbosity),
        server => service::run_process(cli.verbosity, run_server(server)),
    };
    service::exit_code(&format!("switchboard {name}"), result)
}

async fn run_server(command: Command) -> (&'static str, Result<()>) {
    match command {
        Command::Chat(c) => ("chat", serve_chat(*c).await),
        Command::Proxy(p) => ("proxy", serve_proxy(*p).await),
        Command::Http(h) => ("http", serve_http(h).await),
        Command::Echo(t) => (
            "echo",
            run_role(echo::Echo, t.addrs(echo::DEFAULT_ADDR), &t.server).await,
        ),
        Command::Upper(t) => (
            "upper",
            run_role(upper::Upper, t.addrs(upper::DEFAULT_ADDR), &t.server).await,
        ),
        Command::Hello(h) => (
            "hello",
            run_role(hello::Hello::new(&h.message), Addrs::tcp(&h.tcp), &h.server).await,
        ),
        Command::Discard(t) => (
            "discard",
            run_role(discard::Discard, t.addrs(discard::DEFAULT_ADDR), &t.server).await,
        ),
        Command::Connect(_) | Command::Listen(_) | Command::Bench(_) | Command::Serve(_) => {
            unreachable!("client commands are run by main")
        }
    }
}

/// A role of the library's as the whole process: its options read (TLS files too), then
/// bound and served until a signal.
async fn run_role<R: NewSession>(role: R, addrs: Addrs, server: &ServerArgs) -> Result<()> {
    service::run_role(role, addrs, server.config()?).await
}

async fn serve_chat(args: ChatArgs) -> Result<()> {
    let (addrs, server, config) = args.config()?;
    let mut bound = service::bind_with(&addrs, &server).await?;
    let web = match &args.web {
        Some(addr) => {
            let web = service::bind(Some(addr), None).await?;
            let listener = web.tcp.expect("bound a TCP address");
            let scheme = if server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            if let Ok(local) = listener.local_addr() {
                log::info!(role = "chat", addr = local.to_string().as_str(), url = format!("{scheme}://{local}/").as_str(); "listening (web)");
            }
            Some(listener)
        }
        None => None,
    };
    let stats = Stats::new();
    let serve_stats = stats.clone();
    let tcp = bound.listeners();
    service::run_until_signal("chat", stats, service::DEFAULT_DRAIN, move |shutdown| {
        chat::run_with_web(tcp, bound.udp, web, server, config, serve_stats, shutdown)
    })
    .await
}

async fn run_bench(mut opts: bench::BenchOptions) -> Result<()> {
    use std::io::IsTerminal;
    if !opts.target.addr.ip().is_loopback() {
        switchboard::note!(
            "switchboard bench: note: {} is not a loopback address; load only machines you run",
            opts.target
        );
    }
    opts.progress = std::io::stderr().is_terminal() && !opts.json;
    bench::run(opts).await
}

async fn serve_proxy(args: ProxyArgs) -> Result<()> {
    if args.udp {
        return serve_udp_proxy(args).await;
    }
    let (server, config) = args.config()?;
    let stats = Stats::new();
    let serve_stats = stats.clone();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        switchboard::rt::set_connection_threads(0);
        let mut listeners = Listeners::plain(Vec::with_capacity(args.listen.len()));
        for addr in &args.listen {
            let bound = service::bind(Some(addr), None).await?;
            listeners.main.push(bound.tcp.expect("bound a TCP address"));
        }
        if let Some(addr) = &server.tls_listen {
            let bound = service::bind(Some(addr), None).await?;
            listeners
                .tls_beside
                .push(bound.tcp.expect("bound a TCP address"));
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
    // One listener per address on every thread (the TLS one beside them too).
    let mut listeners: Vec<Listeners<std::net::TcpListener>> = (0..threads.max(1))
        .map(|_| Listeners::plain(Vec::new()))
        .collect();
    for addr in &args.listen {
        let bound = service::bind_reuseport(addr, threads).await?;
        for (thread, listener) in listeners.iter_mut().zip(bound) {
            thread.main.push(listener);
        }
    }
    if let Some(addr) = &server.tls_listen {
        let bound = service::bind_reuseport(addr, threads).await?;
        for (thread, listener) in listeners.iter_mut().zip(bound) {
            thread.tls_beside.push(listener);
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

/// `proxy --udp`: one receive loop per `--listen` address, sharing the upstreams.
async fn serve_udp_proxy(args: ProxyArgs) -> Result<()> {
    let config = args.udp_config()?;
    let mut sockets = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let bound = service::bind(None, Some(addr)).await?;
        sockets.push(bound.udp.expect("bound a UDP address"));
    }
    let stats = Stats::new();
    let serve_stats = stats.clone();
    // One pinned thread runs the receive loops, the flows and the reply sender: a
    // datagram's hops between them wake no other thread.
    service::run_until_signal("proxy", stats, service::DEFAULT_DRAIN, move |shutdown| {
        let (done_tx, done_rx) = flume::bounded::<()>(1);
        let started = rt::spawn_pinned_thread("proxy-udp".into(), move || async move {
            proxy::udp::run_many(sockets, config, serve_stats, shutdown).await;
            let _ = done_tx.send(());
        });
        async move {
            match started {
                Ok(_) => {
                    let _ = done_rx.recv_async().await;
                }
                Err(e) => {
                    log::error!(error = e.to_string().as_str(); "proxy: no thread for the UDP proxy")
                }
            }
        }
    })
    .await
}

async fn serve_http(args: HttpArgs) -> Result<()> {
    let config = args.config()?;
    let server = args.server.config_owned()?;
    let mut bound = service::bind_with(&Addrs::tcp(&args.listen), &server).await?;
    let listener = bound.listeners();
    log::info!(root = config.root.display().to_string().as_str(); "http: serving files");
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
