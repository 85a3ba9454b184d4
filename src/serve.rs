//! `switchboard serve CONFIG.toml`: many services in one process, from one file, with an
//! admin listener, reload on SIGHUP, and roles from outside the crate.
//!
//! - [`config`] reads the file; each `[[service]]` table's keys go through its role's
//!   own clap arguments, so the file and the command line are one schema.
//! - [`Server`] is the registry of roles by name: the built-in ones, and any a program
//!   adds with [`Server::role`] (a [`NewSession`] role such as `examples/rot13.rs`) or
//!   [`Server::service`] (any options, any [`Service`]).
//! - [`supervisor`] binds, runs, reloads and drains the services; [`sockets`] holds the
//!   listening sockets by address, so a reload that keeps an address keeps its socket;
//!   [`admin`] is the `/metrics`, `/healthz`, `/services` listener; [`systemd`] takes
//!   sockets passed by systemd and tells it when the server is ready.
//!
//! A reload replaces a service's *generation*: the new one starts accepting on the same
//! sockets, then the old one is retired (it stops accepting, and the sessions it started
//! carry on to their natural end). A service that is gone from the file is drained as at
//! shutdown.

pub mod admin;
mod builtin;
pub mod config;
pub mod sockets;
pub mod supervisor;
pub mod systemd;

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::{Args, FromArgMatches};
use futures::future::BoxFuture;

use crate::Result;
use crate::net::listener::{Listeners, ServerConfig};
use crate::net::shutdown::Shutdown;
use crate::net::stats::Stats;
use crate::options::Transports;
use crate::role::{self, NewSession};
use crate::rt;
use crate::rt::{TcpListener, UdpSocket};
use crate::service::{self, Addrs, DEFAULT_DRAIN, Verbosity};
use config::{Problem, ServiceSpec};

/// The addresses a service listens on, as written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listen {
    pub tcp: Vec<String>,
    pub udp: Vec<String>,
}

/// A configured service: what it listens on, and how one generation of it runs.
pub trait Service: Send + Sync + 'static {
    /// The addresses to bind (or keep) for it.
    fn listen(&self) -> Listen;

    /// How long its sessions are given to finish when it stops (at shutdown, or when a
    /// reload removes it) before they are told to close.
    fn drain(&self) -> Duration {
        DEFAULT_DRAIN
    }

    /// Whether this configuration can take over from a running generation that listens
    /// on `running` (keeping the service's [`Generation::state`]); otherwise a reload
    /// stops the old service and starts this one afresh.
    fn takes_over(&self, _running: &Listen) -> bool {
        true
    }

    /// Runs one generation on the sockets given until it is retired or shut down.
    /// Returns when its accept and receive loops have stopped (sessions may go on).
    fn start(&self, generation: Generation) -> BoxFuture<'static, ()>;
}

/// What one generation of a service runs with.
pub struct Generation {
    /// A socket for each of [`Service::listen`]'s TCP addresses, in that order.
    pub tcp: Vec<TcpListener>,
    /// A socket for each UDP address, in order.
    pub udp: Vec<UdpSocket>,
    /// The service's counters (kept across reloads).
    pub stats: Arc<Stats>,
    /// Fires when the service stops: drain, as at a process's shutdown.
    pub shutdown: Shutdown,
    /// Fires at the end of the drain: close what is still open.
    pub close: Shutdown,
    /// Fires when a newer generation has taken over: stop accepting, leave the sessions.
    pub retire: Shutdown,
    /// State the service keeps across generations (a chat's broker).
    state: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl Generation {
    /// The state every generation of this service shares: made by the first one that
    /// asks, found by the rest.
    pub fn state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let any = self
            .state
            .get_or_init(|| Arc::new(T::default()) as Arc<dyn Any + Send + Sync>)
            .clone();
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a service's state always has the one type"))
    }
}

/// Builds a service from its parsed options.
type Build = dyn Fn(&clap::ArgMatches) -> Result<Box<dyn Service>> + Send + Sync;

/// One role the server knows by name.
struct RoleEntry {
    /// Its options, as a clap command (the subcommand's own arguments).
    options: fn() -> clap::Command,
    build: Box<Build>,
}

/// The roles `serve` can run, by name: the built-in ones and any added.
///
/// ```no_run
/// # use switchboard::serve::Server;
/// # #[derive(Clone)] struct Rot13;
/// # impl switchboard::role::Role for Rot13 { type Session = Self; fn name(&self) -> &'static str { "rot13" } }
/// # impl switchboard::role::Session for Rot13 {
/// #     fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, switchboard::role::Flow) {
/// #         (input, switchboard::role::Flow::Continue)
/// #     }
/// # }
/// fn main() -> std::process::ExitCode {
///     // `PROGRAM serve FILE` now runs rot13 services beside the built-in roles.
///     Server::new().role("rot13", || Rot13).main()
/// }
/// ```
pub struct Server {
    roles: BTreeMap<String, RoleEntry>,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// The built-in roles: chat, echo, upper, hello, discard, proxy, http.
    pub fn new() -> Server {
        builtin::register(Server {
            roles: BTreeMap::new(),
        })
    }

    /// Adds a role whose options are `A` (a clap `Args` struct: its long flags are the
    /// service's keys) and which `build` turns into a [`Service`]. A name already known
    /// is replaced.
    pub fn service<A, F>(mut self, name: &str, build: F) -> Server
    where
        A: Args + FromArgMatches + 'static,
        F: Fn(A) -> Result<Box<dyn Service>> + Send + Sync + 'static,
    {
        let entry = RoleEntry {
            options: || A::augment_args(clap::Command::new("service")),
            build: Box::new(move |matches| build(A::from_arg_matches(matches)?)),
        };
        self.roles.insert(name.to_owned(), entry);
        self
    }

    /// Adds a role written with [`crate::role`] (a [`Role`](crate::role::Role) and its
    /// sessions), made by `make`. Its keys are `tcp`, `udp` (at least one) and the
    /// options every server takes (`max_conns`, `idle_timeout`, `allow`, `deny`).
    pub fn role<R, F>(self, name: &str, make: F) -> Server
    where
        R: NewSession,
        F: Fn() -> R + Send + Sync + 'static,
    {
        let role_name = name.to_owned();
        self.service(name, move |t: Transports| {
            if t.tcp.is_none() && t.udp.is_none() {
                return Err(
                    format!("role {role_name} needs tcp = \"ADDR\" or udp = \"ADDR\"").into(),
                );
            }
            Ok(Box::new(RoleService {
                role: Arc::new(make()),
                addrs: Addrs {
                    tcp: t.tcp,
                    udp: t.udp,
                },
                server: t.server.config_owned()?,
            }) as Box<dyn Service>)
        })
    }

    /// The names of the roles it knows.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// Builds the service a `[[service]]` table describes; each problem has its line.
    pub fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, Vec<Problem>> {
        let in_spec = |p: Problem| p.in_service(&spec.name);
        let Some(entry) = self.roles.get(&spec.role) else {
            let known: Vec<&str> = self.role_names().collect();
            return Err(vec![in_spec(Problem {
                line: Some(spec.line),
                service: None,
                key: Some("role".into()),
                message: format!("unknown role {:?} (known: {})", spec.role, known.join(", ")),
            })]);
        };
        let command = (entry.options)()
            .no_binary_name(true)
            .disable_help_flag(true)
            .disable_version_flag(true);
        let mut problems = Vec::new();
        // Each key alone first, so that every bad key is reported, not just the first.
        let alone = command.clone().mut_args(|a| a.required(false));
        let mut known = Vec::new();
        for key in &spec.keys {
            let flag = key.name.replace('_', "-");
            if !command.get_arguments().any(|a| a.get_long() == Some(&flag)) {
                problems.push(in_spec(self.unknown_key(&spec.role, key)));
                continue;
            }
            // A key alone misses what it `requires` (`proxy_from` needs `accept_proxy`):
            // that is for the check of all keys together below, which sees them all.
            match alone.clone().try_get_matches_from(&key.args) {
                Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {}
                Err(e) => problems.push(in_spec(clap_problem(spec, &e))),
                Ok(_) => {}
            }
            known.push(key);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let args = known.iter().flat_map(|k| k.args.iter());
        let matches = command
            .try_get_matches_from(args)
            .map_err(|e| vec![in_spec(clap_problem(spec, &e))])?;
        (entry.build)(&matches).map_err(|e| {
            let message = e.to_string();
            // A check across options names them as flags: point at the first one given.
            let key = message
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .filter_map(|w| w.strip_prefix("--"))
                .find(|flag| spec.line_of(flag).is_some())
                .map(|flag| flag.replace('-', "_"));
            vec![in_spec(key_problem(spec, key, message))]
        })
    }
}

impl Server {
    /// A key that is not an option of `role`, saying which roles have it.
    fn unknown_key(&self, role: &str, key: &config::Key) -> Problem {
        let flag = key.name.replace('_', "-");
        let elsewhere: Vec<&str> = self
            .roles
            .iter()
            .filter(|(_, e)| {
                (e.options)()
                    .get_arguments()
                    .any(|a| a.get_long() == Some(&flag))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        let message = if elsewhere.is_empty() {
            format!("unknown key for role {role}")
        } else {
            format!(
                "not an option of role {role} (it is one of: {})",
                elsewhere.join(", ")
            )
        };
        Problem {
            line: Some(key.line),
            service: None,
            key: Some(key.name.clone()),
            message,
        }
    }
}

/// A clap error about a service's keys, with the key and its line.
fn clap_problem(spec: &ServiceSpec, e: &clap::Error) -> Problem {
    use clap::error::{ContextKind, ContextValue};
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split_whitespace().next().map(str::to_owned),
        Some(ContextValue::Strings(v)) => v
            .first()
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned),
        _ => None,
    };
    let key = flag.map(|f| f.trim_start_matches("--").replace('-', "_"));
    let message = if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
        "is required".to_owned()
    } else {
        // The first paragraph of clap's message, without its "error: " and usage.
        let rendered = e.render().to_string();
        rendered
            .split("\n\n")
            .next()
            .unwrap_or("invalid")
            .trim_start_matches("error: ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    key_problem(spec, key, message)
}

/// A problem about `key` of `spec` (at its line), or about the table (at its start).
fn key_problem(spec: &ServiceSpec, key: Option<String>, message: String) -> Problem {
    Problem {
        line: key
            .as_deref()
            .and_then(|k| spec.line_of(k))
            .or(Some(spec.line)),
        service: None,
        key,
        message,
    }
}

/// A [`NewSession`] role as a service: [`role::run`] on its TCP and UDP sockets.
struct RoleService<R> {
    role: Arc<R>,
    addrs: Addrs,
    server: ServerConfig,
}

impl<R: NewSession> Service for RoleService<R> {
    fn listen(&self) -> Listen {
        Listen {
            tcp: with_tls(self.addrs.tcp.iter().cloned().collect(), &self.server),
            udp: self.addrs.udp.iter().cloned().collect(),
        }
    }

    fn start(&self, mut g: Generation) -> BoxFuture<'static, ()> {
        let server = ServerConfig {
            retire: Some(g.retire.clone()),
            ..self.server.clone()
        };
        Box::pin(role::run(
            self.role.clone(),
            listeners(std::mem::take(&mut g.tcp), &server),
            g.udp.pop(),
            Arc::new(server),
            g.stats,
            g.shutdown,
        ))
    }
}

/// A service's TCP addresses for [`Service::listen`]: its own, then the TLS listener
/// beside them (`tls_listen`), which the check of the file and the sockets held across
/// reloads then cover like any other.
pub fn with_tls(mut tcp: Vec<String>, server: &ServerConfig) -> Vec<String> {
    tcp.extend(server.tls_listen.iter().cloned());
    tcp
}

/// A generation's TCP sockets, in the order [`with_tls`] listed their addresses: its
/// own, and the TLS one beside them last.
pub fn listeners(mut tcp: Vec<TcpListener>, server: &ServerConfig) -> Listeners {
    let tls_beside = match server.tls_listen {
        Some(_) => tcp.pop().into_iter().collect(),
        None => Vec::new(),
    };
    Listeners {
        main: tcp,
        tls_beside,
    }
}

/// `serve`, `check` and `reload`: the commands of a program that serves config files
/// (the `switchboard` binary's, and any program built on [`Server`]).
#[derive(clap::Subcommand)]
pub enum Command {
    /// Runs every service a config file lists, in one process; SIGHUP reloads the file.
    Serve(ServeArgs),
    /// Checks a config file without serving it: every problem, with its line.
    Check(CheckArgs),
    /// Tells a running `serve` to reload its config file (SIGHUP, by its pid file).
    Reload(ReloadArgs),
}

/// `serve`'s arguments.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// The config file (TOML): an optional [admin] table and [[service]] tables whose
    /// keys are the long flags of each role's subcommand (README: "Running as a service").
    pub config: PathBuf,
    /// Write the process id here (for `reload`); removed at exit.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

/// `check`'s arguments.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The config file to check.
    pub config: PathBuf,
    /// Do not try the addresses (by default each is bound for a moment, so one in use
    /// is reported; skip that when checking the next file of a server that holds them).
    #[arg(long)]
    pub no_bind: bool,
}

/// `reload`'s arguments.
#[derive(clap::Args)]
pub struct ReloadArgs {
    /// The pid file `serve --pid-file` wrote.
    #[arg(long, value_name = "FILE")]
    pub pid_file: PathBuf,
}

/// The command line of a program that is only a [`Server`]: `serve`, `check`, `reload`.
#[derive(clap::Parser)]
struct ServerCli {
    #[command(flatten)]
    verbosity: Verbosity,
    #[command(subcommand)]
    command: Command,
}

impl Server {
    /// Runs `command` with these roles: a whole process (logging set up by `verbosity`,
    /// errors on stderr, the exit code saying how it went).
    pub fn run(self, command: Command, verbosity: Verbosity) -> ExitCode {
        let (name, result) = match command {
            Command::Serve(args) => {
                let options = supervisor::Options {
                    pid_file: args.pid_file,
                };
                let result =
                    service::run_process(verbosity, supervisor::serve(self, &args.config, options));
                ("serve", result)
            }
            Command::Check(args) => ("check", rt::block_on(check(&self, args))),
            Command::Reload(args) => ("reload", reload(&args.pid_file)),
        };
        // Errors carry the program's own name (`rot13 check: ...` for a plug-in's program).
        let program = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "switchboard".into());
        service::exit_code(&format!("{program} {name}"), result)
    }

    /// [`Server::run`] on the process's own command line (`PROGRAM serve CONFIG`, ...).
    pub fn main(self) -> ExitCode {
        use clap::Parser;
        let cli = ServerCli::parse();
        self.run(cli.command, cli.verbosity)
    }
}

/// `check`: prints every problem (or that the file is fine).
async fn check(server: &Server, args: CheckArgs) -> Result<()> {
    let checked = supervisor::check(server, &args.config)?;
    if !args.no_bind {
        let in_use = supervisor::probe_addresses(&checked).await;
        if !in_use.is_empty() {
            return Err(format!("{}: {}", args.config.display(), in_use.join("; ")).into());
        }
    }
    let n = checked.services.len();
    println!(
        "{}: ok, {n} service{}",
        args.config.display(),
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `switchboard reload`: sends SIGHUP to the `serve` whose pid file is `pid_file`.
pub fn reload(pid_file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read the pid file {}: {e}", pid_file.display()))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{} does not hold a process id", pid_file.display()))?;
    // A stale pid file may name another program by now, which SIGHUP would likely kill:
    // signal only a process running `serve`.
    let cmdline =
        std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).map_err(|_| {
            format!(
                "no process {} (is the pid file {} stale?)",
                pid.as_raw_nonzero(),
                pid_file.display()
            )
        })?;
    if !cmdline.split(|&b| b == 0).any(|arg| arg == b"serve") {
        return Err(format!(
            "process {} is not a switchboard serve (is the pid file {} stale?)",
            pid.as_raw_nonzero(),
            pid_file.display()
        )
        .into());
    }
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| format!("cannot signal process {}: {e}", pid.as_raw_nonzero()))?;
    crate::note!(
        "sent SIGHUP to switchboard serve (pid {})",
        pid.as_raw_nonzero()
    );
    Ok(())
}
