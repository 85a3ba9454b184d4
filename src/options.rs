//! The options of each server role, as one set of types that both the command line
//! (clap's derive) and `serve`'s config file build: a key in a `[[service]]` table is the
//! long flag of the same subcommand with dashes as underscores, parsed by the same clap
//! argument (see [`crate::serve::config`]). Defaults, value parsers and the checks across
//! options live here once, and each `*Args` turns into what its role runs on.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;

use crate::Result;
use crate::net::access::{AccessList, parse_cidr};
use crate::net::duration::{nonzero, parse_duration};
use crate::net::listener::ServerConfig;
use crate::net::splice;
use crate::net::tls::{self, Verify};
use crate::roles::chat::{self, broker::ChatConfig};
use crate::roles::proxy::{
    self, ProxyConfig,
    ftp::{self, FtpConfig},
    header::Version,
    health::{EXPECT_WINDOW, HealthCheck, MIN_INTERVAL, unescape},
    sni::{self, SniRoute, SniRoutes},
    udp::UdpProxyConfig,
    upstreams::{Balance, UpstreamTls, Upstreams},
};
use crate::roles::{hello, http};
use crate::service::{Addrs, ServerArgs};

/// `--tcp` and `--udp`, for a role that serves either or both.
#[derive(Args, Clone, Debug)]
pub struct Transports {
    /// TCP address to serve (given alone, only TCP is served).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// UDP address to serve (given alone, only UDP is served).
    #[arg(long, value_name = "ADDR")]
    pub udp: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl Transports {
    /// Both on `default` when neither is named, else just the ones named.
    pub fn addrs(&self, default: &str) -> Addrs {
        match (&self.tcp, &self.udp) {
            (None, None) => Addrs::both(default),
            (tcp, udp) => Addrs {
                tcp: tcp.clone(),
                udp: udp.clone(),
            },
        }
    }
}

/// `switchboard chat`.
#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub transports: Transports,
    /// Longest line accepted, in bytes; longer lines are dropped with an error.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    pub max_line: usize,
    /// Lines per second each client may send on average (0 = no limit).
    #[arg(long, value_name = "LINES", default_value_t = 20.0)]
    pub rate: f64,
    /// Lines each client may send at once before --rate applies.
    #[arg(long, value_name = "LINES", default_value_t = 40)]
    pub burst: u32,
    /// Lines queued for one TCP client before it is disconnected as too slow.
    #[arg(long, value_name = "LINES", default_value_t = 1024)]
    pub sendq: usize,
    /// Bytes queued for one TCP client before it is disconnected as too slow.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub sendq_bytes: usize,
    /// The most UDP users at once; more get `! server full`.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_udp_users: usize,
    /// The most UDP users from one source (an IPv4 address or an IPv6 /64); more get
    /// `! too many users from your address`. Default: a quarter of --max-udp-users, at
    /// most 256.
    #[arg(long, value_name = "N")]
    pub max_udp_users_per_ip: Option<usize>,
    /// Drop a UDP user after this long without a datagram.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub udp_idle: Duration,
    /// UDP joins a second for the whole server (more are refused: `! too many joins`;
    /// the client sends `/hello` again); short replies to unknown addresses are limited
    /// to twice this.
    #[arg(long, value_name = "JOINS", default_value_t = 50.0)]
    pub udp_join_rate: f64,
    /// UDP joins a second from one source (an IPv4 address or an IPv6 /64), so that one
    /// host cannot take every join --udp-join-rate allows.
    #[arg(long, value_name = "JOINS", default_value_t = 5.0)]
    pub udp_joins_per_ip: f64,
    /// Join a cluster of chat servers sharing rooms, nicks and /msg through Redis:
    /// redis://[USER:PASS@]HOST:PORT[/DB] or rediss://… (TLS). The password is never logged.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This server's name in the cluster (logs, and its node id NAME.RANDOM). Default:
    /// the host name.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub node_name: Option<String>,
    /// Prefix of every Redis key and channel the cluster uses (several clusters can
    /// share one Redis).
    #[arg(long, value_name = "PREFIX", default_value = chat::cluster::DEFAULT_PREFIX, requires = "cluster")]
    pub cluster_prefix: String,
    /// How long nicks and a node's liveness last without renewal: a server that dies
    /// frees its nicks, and the others announce its users as gone, within about this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s", requires = "cluster")]
    pub cluster_lease: Duration,
    /// Lines waiting to go to Redis at most; beyond it lines reach only this server's
    /// users (counted, and the sayer told once).
    #[arg(long, value_name = "LINES", default_value_t = chat::cluster::DEFAULT_QUEUE, requires = "cluster")]
    pub cluster_queue: usize,
    /// Serve the chat to browsers on ADDR: the page at `/` and WebSocket users at `/ws`
    /// (https:// and wss:// with --tls-cert). Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<String>,
    /// An origin besides the page's own allowed to open the WebSocket
    /// (`https://chat.example.com`); repeatable. Others are refused (403).
    #[arg(long, value_name = "ORIGIN", requires = "web")]
    pub web_origin: Vec<String>,
    /// How long a web request head (and so a WebSocket handshake) may take.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
}

impl ChatArgs {
    /// The addresses, the accept loop's settings and the broker's limits these options
    /// ask for; an error names the options that are out of range.
    pub fn config(&self) -> Result<(Addrs, ServerConfig, ChatConfig)> {
        if self.max_line == 0
            || self.sendq == 0
            || self.sendq_bytes == 0
            || self.burst == 0
            || self.rate.is_nan()
            || self.rate < 0.0
        {
            return Err(
                "--max-line, --sendq, --sendq-bytes and --burst must be at least 1, and --rate 0 or more".into(),
            );
        }
        if !self.udp_join_rate.is_finite() || self.udp_join_rate <= 0.0 {
            return Err("--udp-join-rate must be a number above 0".into());
        }
        if !self.udp_joins_per_ip.is_finite() || self.udp_joins_per_ip <= 0.0 {
            return Err("--udp-joins-per-ip must be a number above 0".into());
        }
        let config = ChatConfig {
            max_line: self.max_line,
            rate: self.rate,
            burst: self.burst,
            sendq: self.sendq,
            sendq_bytes: self.sendq_bytes,
            udp_idle: self.udp_idle.max(Duration::from_millis(100)),
            max_udp_users: self.max_udp_users,
            max_udp_users_per_ip: self
                .max_udp_users_per_ip
                .unwrap_or((self.max_udp_users / 4).clamp(1, 256)),
            udp_join_rate: self.udp_join_rate,
            udp_joins_per_ip: self.udp_joins_per_ip,
            udp_challenge_rate: (2.0 * self.udp_join_rate).max(10.0),
            cluster: self.cluster_config()?,
            web_origins: self.web_origins()?,
            web_header_timeout: self.header_timeout.max(Duration::from_millis(1)),
        };
        let addrs = self.transports.addrs(chat::DEFAULT_ADDR);
        Ok((addrs, self.transports.server.config_owned()?, config))
    }
}

impl ChatArgs {
    /// `--web-origin`s as compared: `scheme://host[:port]`, lower case.
    fn web_origins(&self) -> Result<Vec<String>> {
        self.web_origin
            .iter()
            .map(|o| {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.contains('/') => Ok(o),
                    _ => Err(format!("--web-origin {o}: expected http(s)://HOST[:PORT]").into()),
                }
            })
            .collect()
    }

    fn cluster_config(&self) -> Result<Option<chat::cluster::ClusterConfig>> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        let config = chat::cluster::ClusterConfig {
            url: url.clone(),
            node_name: self.node_name.clone().unwrap_or_else(host_name),
            prefix: self.cluster_prefix.clone(),
            lease: self.cluster_lease,
            queue: self.cluster_queue,
            max_line: self.max_line,
        };
        config.check()?;
        Ok(Some(config))
    }
}

/// This machine's name, as a node name may be written (else `node`).
fn host_name() -> String {
    let name = rustix::system::uname();
    let name: String = name
        .nodename()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    if name.is_empty() { "node".into() } else { name }
}

/// `switchboard hello`.
#[derive(Args, Clone, Debug)]
pub struct HelloArgs {
    /// TCP address to serve.
    #[arg(long, value_name = "ADDR", default_value = hello::DEFAULT_ADDR)]
    pub tcp: String,
    /// The greeting (a newline is added).
    #[arg(long, default_value = hello::DEFAULT_MESSAGE)]
    pub message: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `switchboard http`.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value = http::DEFAULT_ADDR)]
    pub listen: String,
    /// Directory to serve (nothing outside it is ever served).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Close clients that have not sent a complete request head within this time (408).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl HttpArgs {
    /// The role's settings; an error when `--root` is not a directory that can be read.
    pub fn config(&self) -> Result<http::HttpConfig> {
        http::HttpConfig::new(
            &self.root,
            self.header_timeout.max(Duration::from_millis(1)),
        )
    }
}

/// Whether the proxy splices unless told `--no-splice`: on Linux, where `splice(2)` is.
pub const SPLICE_BY_DEFAULT: bool = cfg!(target_os = "linux");

/// `switchboard proxy`.
#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// Address to accept clients on (repeatable: one proxy on several addresses, sharing
    /// its upstreams and limits).
    #[arg(long, value_name = "ADDR", default_value = proxy::DEFAULT_ADDR)]
    pub listen: Vec<String>,
    /// Where to forward: HOST:PORT (repeatable; resolved at every connect).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "sni_route")]
    pub upstream: Vec<String>,
    /// Originate TLS: connect to each upstream over TLS, verifying its certificate
    /// against the system's roots (or --upstream-ca) by its host name (or
    /// --upstream-sni). A failed handshake fails that upstream; never a plain fallback.
    #[arg(long)]
    pub upstream_tls: bool,
    /// With --upstream-tls: verify upstreams against the certificates in this PEM file
    /// instead of the system's roots.
    #[arg(
        long,
        value_name = "PEM",
        requires = "upstream_tls",
        conflicts_with = "upstream_insecure"
    )]
    pub upstream_ca: Option<PathBuf>,
    /// With --upstream-tls: the server name to send and verify, instead of each
    /// upstream's host.
    #[arg(long, value_name = "NAME", requires = "upstream_tls")]
    pub upstream_sni: Option<String>,
    /// With --upstream-tls: do not verify upstreams' certificates at all (anyone in the
    /// path can read and change the traffic; logged at start).
    #[arg(long, requires = "upstream_tls")]
    pub upstream_insecure: bool,
    /// TLS passthrough routed by SNI: clients whose ClientHello names NAME (exact, or
    /// `*.example.com` for any name under it) go to HOST:PORT, their bytes untouched
    /// (repeatable; a NAME given again balances among its upstreams). The hello must
    /// come within --proxy-header-timeout.
    #[arg(long, value_name = "NAME=HOST:PORT", value_parser = sni::parse_route,
        conflicts_with_all = ["upstream", "upstream_tls", "tls_cert", "tls_listen"])]
    pub sni_route: Vec<SniRoute>,
    /// With --sni-route: where a ClientHello with no server name, or one no route takes,
    /// goes (by default such clients are closed).
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "sni_route",
        conflicts_with = "upstream"
    )]
    pub sni_default: Option<String>,
    /// How new sessions pick an upstream.
    #[arg(long, value_enum, default_value = "round-robin")]
    pub balance: Balance,
    /// Give up one connect attempt to an upstream after this long (then try the next).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// Skip an upstream that failed for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub backoff: Duration,
    /// Probe each upstream this often (a TCP connect, and --check-send/--check-expect if
    /// given); upstreams the checks find down get no sessions [default: off, the
    /// passive --backoff alone]. At least 10ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub check_interval: Option<Duration>,
    /// With --check-interval: the most one probe may take (lookup, connect, TLS
    /// handshake, send, expected answer).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s",
        requires = "check_interval")]
    pub check_timeout: Duration,
    /// With --check-interval: failed probes in a row that mark an upstream down.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "check_interval",
        value_parser = clap::value_parser!(u32).range(1..))]
    pub check_fall: u32,
    /// With --check-interval: passed probes in a row that mark a down upstream up.
    #[arg(long, value_name = "N", default_value_t = 2, requires = "check_interval",
        value_parser = clap::value_parser!(u32).range(1..))]
    pub check_rise: u32,
    /// With --check-interval: bytes each probe sends once connected (escapes: \r \n \t
    /// \0 \\ \xHH), as HAProxy's `tcp-check send`.
    #[arg(long, value_name = "STRING", requires = "check_interval")]
    pub check_send: Option<String>,
    /// With --check-interval: a probe passes only if this (escapes as --check-send) is
    /// in the first 4 KiB the upstream answers within --check-timeout, as HAProxy's
    /// `tcp-check expect string`.
    #[arg(long, value_name = "STRING", requires = "check_interval")]
    pub check_expect: Option<String>,
    /// After one side half-closes, close the session if nothing moves for this long (0 = never).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub fin_timeout: Duration,
    /// Write a PROXY protocol header (v1 text or v2 binary) to the upstream.
    #[arg(long, value_enum, value_name = "VERSION")]
    pub send_proxy: Option<Version>,
    /// Read a PROXY protocol header (v1 or v2) from each client; only behind a balancer you trust.
    #[arg(long)]
    pub accept_proxy: bool,
    /// With --accept-proxy: only these peers may send headers (repeatable CIDR; default:
    /// anyone). --allow/--deny then judge the client each header names.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "accept_proxy")]
    pub proxy_from: Vec<IpNet>,
    /// Close clients that send no whole PROXY header (--accept-proxy) or ClientHello
    /// (--sni-route) within this time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub proxy_header_timeout: Duration,
    /// Log the traffic itself, tagged client->server / server->client (text, or hex; the
    /// first 1 KiB of each chunk read). Tapped sessions copy: the bytes must be seen.
    #[arg(long)]
    pub tap: bool,
    /// Move each direction's bytes socket -> pipe -> socket with splice(2), never through
    /// user space [default: on, on Linux].
    #[arg(long, overrides_with = "no_splice")]
    pub splice: bool,
    /// Copy each direction's bytes through the proxy instead of splicing them.
    #[arg(long, overrides_with = "splice")]
    pub no_splice: bool,
    /// With splice: every byte through the pipe, small messages too. By default a
    /// direction copies until a read fills the pipe, then splices that bulk (a small
    /// message costs less copied).
    #[arg(long, conflicts_with = "no_splice")]
    pub splice_always: bool,
    /// With splice: the pipe each direction holds its bytes in, at most (rounded up to a
    /// power of two pages; an unprivileged proxy is held to fs.pipe-max-size).
    #[arg(long, value_name = "BYTES", default_value_t = splice::PIPE_CAPACITY as u64,
        value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub splice_pipe: u64,
    /// Threads, each with its own listener (SO_REUSEPORT) and executor, so a session's
    /// actors never hop threads [default: one per core]; 0 = one shared executor, where
    /// idle threads steal work. (Under `serve`, sessions run on the process's
    /// connection threads, one per core, and this may not be set.)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// On Ctrl-C or SIGTERM, let open sessions finish for this long (a second signal closes at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub drain: Duration,
    /// Forward UDP datagrams instead of TCP connections: each client address is a flow
    /// with a socket of its own to the upstream --balance picks, so replies find it.
    /// (Health checks are TCP probes: --check-* is refused with --udp.)
    #[arg(long, conflicts_with_all = ["accept_proxy", "send_proxy", "tap", "splice", "splice_always", "tls_cert", "tls_listen", "upstream_tls", "sni_route", "check_interval"])]
    pub udp: bool,
    /// With --udp: a flow ends after this long with no datagram either way.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub udp_idle: Duration,
    /// With --udp: the most flows at once; a new client's datagrams past it are dropped
    /// and counted.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_flows: usize,
    /// FTP through the proxy: the control connection is read as lines; PASV/EPSV
    /// replies and PORT/EPRT commands are rewritten to the proxy's own data listeners,
    /// and the proxy connects the data channels (to the upstream's address, never the
    /// one a reply names). After `AUTH TLS` the control connection is passed unparsed.
    #[arg(long, conflicts_with_all = ["udp", "sni_route", "tls_cert", "tls_listen", "upstream_tls"])]
    pub ftp: bool,
    /// With --ftp: the ports data listeners bind, LOW-HIGH (for firewalls) [default: any].
    #[arg(long, value_name = "LOW-HIGH", requires = "ftp", value_parser = ftp::parse_port_range)]
    pub ftp_data_ports: Option<(u16, u16)>,
    /// With --ftp: how long a data listener waits for its one connection before closing.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub ftp_data_timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl ProxyArgs {
    /// With `--upstream-tls`: the client side's settings (the CA file is read here, so
    /// a bad one is an error at start and at reload).
    fn upstream_tls(&self) -> Result<Option<UpstreamTls>> {
        if !self.upstream_tls {
            return Ok(None);
        }
        let verify = match (&self.upstream_ca, self.upstream_insecure) {
            (_, true) => Verify::Insecure,
            (Some(ca), false) => Verify::Ca(ca.clone()),
            (None, false) => Verify::SystemRoots,
        };
        let config = tls::client_config_for(&verify, "--upstream-ca", "--upstream-insecure")?;
        if let Some(name) = &self.upstream_sni {
            tls::server_name("", Some(name)).map_err(|e| format!("--upstream-sni: {e}"))?;
        }
        Ok(Some(UpstreamTls {
            config,
            sni: self.upstream_sni.clone(),
            insecure: self.upstream_insecure,
        }))
    }

    /// With `--udp`: the UDP proxy's settings.
    pub fn udp_config(&self) -> Result<UdpProxyConfig> {
        self.config()?; // the checks the TCP proxy makes of --listen hold too
        if self.max_flows == 0 {
            return Err("--max-flows must be at least 1".into());
        }
        Ok(UdpProxyConfig {
            upstreams: Upstreams::new(self.upstream.clone(), self.balance, self.backoff),
            idle: self.udp_idle.max(Duration::from_millis(10)),
            max_flows: self.max_flows,
        })
    }

    /// With `--check-interval`: how upstreams are probed; an error for values out of
    /// range or escapes that do not decode.
    pub fn health_check(&self) -> Result<Option<HealthCheck>> {
        let Some(interval) = self.check_interval else {
            return Ok(None);
        };
        if interval < MIN_INTERVAL {
            return Err(format!(
                "--check-interval must be at least {MIN_INTERVAL:?} (leave it out for no health checks)"
            )
            .into());
        }
        if self.check_timeout.is_zero() {
            return Err("--check-timeout must be above 0".into());
        }
        let send = match &self.check_send {
            Some(text) => unescape(text).map_err(|e| format!("--check-send {e}"))?,
            None => Vec::new(),
        };
        let expect = match &self.check_expect {
            Some(text) => {
                let expect = unescape(text).map_err(|e| format!("--check-expect {e}"))?;
                if expect.is_empty() || expect.len() > EXPECT_WINDOW {
                    return Err(format!("--check-expect must be 1 to {EXPECT_WINDOW} bytes").into());
                }
                Some(expect)
            }
            None => None,
        };
        Ok(Some(HealthCheck {
            interval,
            timeout: self.check_timeout,
            fall: self.check_fall.max(1),
            rise: self.check_rise.max(1),
            send,
            expect,
        }))
    }

    /// The accept loops' settings and the proxy's; an error for a `--listen` address
    /// given twice.
    pub fn config(&self) -> Result<(ServerConfig, ProxyConfig)> {
        for (i, addr) in self.listen.iter().enumerate() {
            // Port 0 twice is two ports the kernel picks.
            if self.listen[..i].contains(addr) && !addr.ends_with(":0") {
                return Err(format!("--listen {addr} is given twice").into());
            }
        }
        let upstreams = Upstreams::with_tls(
            self.upstream.clone(),
            self.balance,
            self.backoff,
            self.upstream_tls()?,
        );
        // Before the SNI routes: their tables are this one's siblings, and share its checks.
        let upstreams = match self.health_check()? {
            Some(check) => upstreams.checked(check),
            None => upstreams,
        };
        let sni = match self.sni_route.is_empty() {
            true => None,
            false => Some(SniRoutes::new(
                &self.sni_route,
                self.sni_default.as_deref(),
                &upstreams,
                self.proxy_header_timeout,
            )?),
        };
        let config = ProxyConfig {
            upstreams,
            sni,
            connect_timeout: self.connect_timeout.max(Duration::from_millis(1)),
            fin_timeout: nonzero(self.fin_timeout),
            send_proxy: self.send_proxy,
            accept_proxy: self
                .accept_proxy
                .then_some(self.proxy_header_timeout.max(Duration::from_millis(1))),
            tap: self.tap,
            splice: (!self.no_splice && (self.splice || SPLICE_BY_DEFAULT))
                .then_some(self.splice_pipe as usize),
            splice_always: self.splice_always,
            ftp: self.ftp.then(|| {
                FtpConfig::new(
                    self.ftp_data_ports,
                    self.ftp_data_timeout.max(Duration::from_millis(1)),
                )
            }),
        };
        if self.ftp && self.ftp_data_timeout.is_zero() {
            return Err("--ftp-data-timeout must be more than 0: a data listener that takes no client is useless".into());
        }
        if self.accept_proxy && self.server.tls_cert.is_some() {
            // A balancer's PROXY header comes before the client's TLS handshake, and
            // the handshake runs before the session reads anything.
            return Err("--accept-proxy cannot be used with --tls-cert yet: the PROXY header would come before the TLS handshake".into());
        }
        let server = ServerConfig {
            proxy_from: AccessList::new(self.proxy_from.clone(), vec![]),
            ..self.server.config_owned()?
        };
        Ok((server, config))
    }
}
