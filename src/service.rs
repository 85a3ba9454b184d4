//! Running a server as a process: the command-line options every server takes, the log
//! pipe and open-files limit, bind, serve until SIGINT or SIGTERM, drain, summarise.
//! [`serve_role`] is all of it for a [`Role`](crate::role::Role) in one call, the same path the binary's
//! echo, upper, hello and discard take.
//!
//! Shutdown order: the signal fires the [`Trigger`]; accept loops close their listeners and
//! shut the read half of every connection; readers end as on a client's EOF and drop
//! their senders; writers flush and close. The process waits for the connection tasks to
//! finish for at most the drain time (a second signal cuts it short). A server that
//! leaves connections open at shutdown (the proxy), or whose writers may still be waiting
//! on a client that stopped reading (HTTP), is then told to close what is left
//! ([`run_until_signal_closing`]), so each connection still logs its own line; the
//! process logs one summary line and returns.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ipnet::IpNet;

use crate::Result;
use crate::logging::{self, LogFormat, LogSettings};
use crate::net::access::{AccessList, parse_cidr};
use crate::net::describe::describe;
use crate::net::duration::{nonzero, parse_duration};
use crate::net::listener::{Listeners, ServerConfig};
use crate::net::per_ip::{PerIpLimits, Rate, parse_rate};
use crate::net::shutdown::{self, Shutdown};
use crate::net::stats::Stats;
use crate::net::tls::Tls;
use crate::net::{bind, limits};
use crate::role::{self, NewSession};
use crate::rt::{self, TcpListener, UdpSocket};

/// Default time given to open connections to finish after a shutdown signal.
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(1500);

/// How often the drain checks whether the connection tasks are gone.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// After the drain, how long connections told to close are given to end and log.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The sockets a server was asked to use.
pub struct Bound {
    pub tcp: Option<TcpListener>,
    pub udp: Option<UdpSocket>,
    /// The TLS listener beside the TCP one (`--tls-listen`), bound by [`bind_with`].
    pub tls: Option<TcpListener>,
}

impl Bound {
    /// The TCP listeners: the TCP one, and the TLS one beside it.
    pub fn listeners(&mut self) -> Listeners {
        Listeners {
            main: self.tcp.take().into_iter().collect(),
            tls_beside: self.tls.take().into_iter().collect(),
        }
    }
}

/// Binds `addrs` and the TLS address of `config` (`--tls-listen`), if any.
pub async fn bind_with(addrs: &Addrs, config: &ServerConfig) -> Result<Bound> {
    let mut bound = bind(addrs.tcp.as_deref(), addrs.udp.as_deref()).await?;
    if let Some(addr) = &config.tls_listen {
        bound.tls = Some(bind::bind_tcp(addr).await?);
    }
    Ok(bound)
}

/// Binds the addresses given; the error names the address that failed.
pub async fn bind(tcp: Option<&str>, udp: Option<&str>) -> Result<Bound> {
    let tcp = match tcp {
        Some(a) => Some(bind::bind_tcp(a).await?),
        None => None,
    };
    let udp = match udp {
        Some(a) => Some(bind::bind_udp(a).await?),
        None => None,
    };
    Ok(Bound {
        tcp,
        udp,
        tls: None,
    })
}

/// Binds `n` listeners on one address with `SO_REUSEPORT` (port 0 picks one port for all).
pub async fn bind_reuseport(addr: &str, n: usize) -> Result<Vec<std::net::TcpListener>> {
    let mut target = *rt::resolve(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (TCP): {}", describe(&e)))?
        .first()
        .ok_or_else(|| format!("cannot listen on {addr} (TCP): it resolves to no address"))?;
    // SO_REUSEPORT would let this process join a port another process already listens
    // on with the option (a second switchboard, say) and split its clients. A plain bind
    // first fails on any listener, so a busy port is an error here as everywhere.
    let probe = std::net::TcpListener::bind(target)
        .map_err(|e| format!("cannot listen on {target} (TCP): {}", describe(&e)))?;
    target = probe.local_addr()?; // the port picked, when 0 was asked for
    drop(probe);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let l = bind::bind_tcp_reuseport(target)
            .map_err(|e| format!("cannot listen on {target} (TCP): {}", describe(&e)))?;
        target = l.local_addr()?; // the port the first bind picked, for the rest
        listeners.push(l);
    }
    Ok(listeners)
}

/// Prepares the process for serving: raises the open-files limit.
pub fn prepare() {
    match limits::raise_nofile_limit() {
        Ok(n) => log::debug!(open_files = n; "open-files limit"),
        Err(e) => {
            log::warn!(error = e.to_string().as_str(); "could not raise the open-files limit")
        }
    }
}

/// Runs `serve` until SIGINT or SIGTERM, then drains for up to `drain` and logs a summary.
pub async fn run_until_signal<F, Fut>(
    role: &str,
    stats: Arc<Stats>,
    drain: Duration,
    serve: F,
) -> Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_until_signal_closing(role, stats, drain, move |shutdown, _close| serve(shutdown)).await
}

/// Like [`run_until_signal`], for a server that leaves its connections open at shutdown:
/// `serve` also gets a second [`Shutdown`] that fires when the drain is over (or a second
/// signal came). The server closes what is still open then, and the process waits up to
/// [`CLOSE_WAIT`] for those connections to end (and log) before the summary.
pub async fn run_until_signal_closing<F, Fut>(
    role: &str,
    stats: Arc<Stats>,
    drain: Duration,
    serve: F,
) -> Result<()>
where
    F: FnOnce(Shutdown, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut signals = rt::Signals::new()?;
    let (trigger, shutdown) = shutdown::channel();
    let (close_trigger, close) = shutdown::channel();
    let started = Instant::now();
    let server = rt::spawn(serve(shutdown, close));
    let signal = signals.next().await;
    log::info!(role = role, signal = signal; "shutting down");
    trigger.fire();
    server.await;

    let deadline = Instant::now() + drain;
    let drained = async {
        while stats.live_tasks() > 0 && Instant::now() < deadline {
            rt::sleep(DRAIN_POLL).await;
        }
    };
    futures::select! {
        _ = drained.fuse() => {}
        _ = signals.next().fuse() => log::warn!(role = role; "second signal: closing at once"),
    }
    let left = stats.live_tasks();
    if left > 0 {
        log::warn!(role = role, tasks = left; "closing connections that did not finish in time");
    }
    close_trigger.fire();
    if left > 0 {
        let deadline = Instant::now() + CLOSE_WAIT;
        while stats.live_tasks() > 0 && Instant::now() < deadline {
            rt::sleep(DRAIN_POLL).await;
        }
    }
    log::info!(role = role, uptime_s = started.elapsed().as_secs(); "stopped: {}", stats.summary());
    Ok(())
}

/// The addresses a server serves on: TCP, UDP, or both (`None`: not that transport).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub tcp: Option<String>,
    pub udp: Option<String>,
}

impl Addrs {
    /// TCP and UDP on the same address.
    pub fn both(addr: &str) -> Self {
        Addrs {
            tcp: Some(addr.into()),
            udp: Some(addr.into()),
        }
    }

    /// TCP only.
    pub fn tcp(addr: &str) -> Self {
        Addrs {
            tcp: Some(addr.into()),
            udp: None,
        }
    }
}

/// Options every server takes on the command line (flatten them into a clap command).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Most TCP clients served at once (0 = no limit); over it new clients are closed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_conns: usize,
    /// Most TCP connections one client may have open at once (0 = no limit); over it
    /// its new connections are closed at accept. A client is an IPv4 address or an IPv6
    /// network (--per-ip-prefix-v6).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_conns_per_ip: usize,
    /// Most new TCP connections one client may open: N per DURATION, in bursts of up to
    /// N (a token bucket; 10/1s, 100/1m). Over it they are closed at accept.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_rate)]
    pub conn_rate_per_ip: Option<Rate>,
    /// How many leading bits of an IPv6 address name one client for the per-client
    /// limits (64: a host's usual /64; 128: each address).
    #[arg(long, value_name = "BITS", default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(1..=128))]
    pub per_ip_prefix_v6: u8,
    /// Close a TCP client after this long without input (30s, 5m; 0 = never).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    pub idle_timeout: Duration,
    /// Accept only clients in this block (repeatable; e.g. 10.0.0.0/8 or ::1).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<IpNet>,
    /// Refuse clients in this block (repeatable; wins over --allow).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub deny: Vec<IpNet>,
    /// TLS certificate chain (PEM, leaf first). With --tls-key, the TCP listener speaks
    /// TLS (1.2 and 1.3); with --tls-listen too, a TLS listener is added beside it.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1), read once at start;
    /// keep it readable by its owner alone (a warning says when it is not).
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert and --tls-key: serve TLS on this address beside the plain TCP
    /// listener, instead of making that one TLS (chat: TLS and telnet users in one room).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<String>,
    /// Close a TLS client that has not finished its handshake within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub tls_handshake_timeout: Duration,
}

impl ServerArgs {
    /// The accept loop's settings these options ask for. With `--tls-cert` and
    /// `--tls-key` it reads both files ([`Tls::load`]): an error names the file, or the
    /// options given without their partner.
    pub fn config(&self) -> Result<Arc<ServerConfig>> {
        Ok(Arc::new(self.config_owned()?))
    }

    /// [`config`](Self::config), for a role that adds settings of its own.
    pub fn config_owned(&self) -> Result<ServerConfig> {
        Ok(ServerConfig {
            max_conns: self.max_conns,
            per_ip: PerIpLimits {
                max_conns: self.max_conns_per_ip,
                rate: self.conn_rate_per_ip,
                // (0 only from `ServerArgs::default()`, which clap never gives.)
                v6_prefix: match self.per_ip_prefix_v6 {
                    0 => PerIpLimits::default().v6_prefix,
                    bits => bits,
                },
            },
            idle_timeout: nonzero(self.idle_timeout),
            access: AccessList::new(self.allow.clone(), self.deny.clone()),
            tls: self.tls()?,
            tls_listen: self.tls_listen.clone(),
            ..ServerConfig::default()
        })
    }

    /// The server's TLS, loaded from `--tls-cert` and `--tls-key` (`None` without them).
    pub fn tls(&self) -> Result<Option<Arc<Tls>>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_listen.is_some() => {
                Err("--tls-listen needs --tls-cert and --tls-key".into())
            }
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                if self.tls_handshake_timeout.is_zero() {
                    return Err("--tls-handshake-timeout must be above 0".into());
                }
                Ok(Some(Arc::new(Tls::load(
                    cert,
                    key,
                    self.tls_handshake_timeout,
                )?)))
            }
            (Some(_), None) | (None, Some(_)) => {
                Err("--tls-cert and --tls-key go together: give both, or neither".into())
            }
        }
    }
}

/// `-v`, `-q` and `--log-format` (flatten them into a clap command; they may come after a
/// subcommand).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct Verbosity {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    /// How log lines look (auto: pretty in debug builds, JSON in release builds).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t
    )]
    log_format: LogFormat,
}

impl Verbosity {
    /// The log level asked for: info, one step per `-v` or `-q`.
    pub fn level(&self) -> log::LevelFilter {
        use log::LevelFilter::*;
        let levels = [Off, Error, Warn, Info, Debug, Trace];
        levels[(3 + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 5) as usize]
    }

    /// The log format asked for (`--log-format`).
    pub fn format(&self) -> LogFormat {
        self.log_format
    }
}

impl From<Verbosity> for LogSettings {
    fn from(verbosity: Verbosity) -> Self {
        LogSettings {
            level: verbosity.level(),
            format: verbosity.format(),
        }
    }
}

/// Runs `server` to its end as a server process: logs through the log pipe as `log` says
/// (a [`Verbosity`], or a level alone for femme's format; a closed or stalled stdout
/// cannot stop it), raises the open-files limit, and writes out what is logged before it
/// returns.
pub fn run_process<T>(log: impl Into<LogSettings>, server: impl Future<Output = T>) -> T {
    let log = logging::start(log);
    prepare();
    let result = rt::block_on(server);
    log.finish();
    result
}

/// Binds `addrs`, serves `role` on them until SIGINT or SIGTERM, drains and logs a
/// summary. Inside a process set up by [`run_process`]; [`serve_role`] does both.
pub async fn run_role<R: NewSession>(
    role: R,
    addrs: Addrs,
    config: Arc<ServerConfig>,
) -> Result<()> {
    let mut bound = bind_with(&addrs, &config).await?;
    let stats = Stats::new();
    let role = Arc::new(role);
    let name = role.name();
    let serve_stats = stats.clone();
    let tcp = bound.listeners();
    run_until_signal(name, stats, DEFAULT_DRAIN, move |shutdown| {
        role::run(role, tcp, bound.udp, config, serve_stats, shutdown)
    })
    .await
}

/// The exit code for a process that ended with `result`; an error is printed on stderr
/// first, after `name` (`rot13: cannot listen on ...`).
pub fn exit_code(name: &str, result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::note!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The settings a server runs with, as [`serve_role`] takes them: a [`ServerConfig`]
/// made already, or the [`ServerArgs`] to make it from once the log is up (so a warning
/// about the TLS key file is logged, and an unreadable file is the process's error).
pub trait ServerSettings {
    /// The accept loop's settings.
    fn server_config(self) -> Result<Arc<ServerConfig>>;
}

impl ServerSettings for Arc<ServerConfig> {
    fn server_config(self) -> Result<Arc<ServerConfig>> {
        Ok(self)
    }
}

impl ServerSettings for &ServerArgs {
    fn server_config(self) -> Result<Arc<ServerConfig>> {
        self.config()
    }
}

/// A whole server process in one call: serves `role` on `addrs` until SIGINT or
/// SIGTERM, with the log pipe as `log` says (a [`Verbosity`], or a level alone) and the
/// open-files limit raised, then drains and logs a summary. `config` is the
/// [`ServerArgs`] flattened into the command (or a [`ServerConfig`] made already). An
/// error (an address that cannot be bound, a TLS file that cannot be used) is printed
/// on stderr after the role's name, and the exit code says so.
pub fn serve_role<R: NewSession>(
    role: R,
    addrs: Addrs,
    config: impl ServerSettings,
    log: impl Into<LogSettings>,
) -> ExitCode {
    let name = role.name();
    let run = async move { run_role(role, addrs, config.server_config()?).await };
    exit_code(name, run_process(log, run))
}
