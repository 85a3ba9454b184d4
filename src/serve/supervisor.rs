//! Runs the services of a config file: binds, starts, reloads on SIGHUP, and at SIGINT
//! or SIGTERM drains them all and logs one summary line each.
//!
//! ```text
//!   signals ─▶ supervisor ──start/retire/stop──▶ generations (accept loops, sessions)
//!                  │  owns: Sockets (by address), the running services, the admin
//!                  └─publishes─▶ ServiceInfo list ◀──reads── admin listener (/metrics)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;

use super::admin::{self, ServiceInfo, Services};
use super::config::{self, File, Problem, Problems, ServiceSpec};
use super::sockets::Sockets;
use super::{Generation, Listen, Server, Service, systemd};
use crate::Result;
use crate::net::shutdown::{self, Shutdown, Trigger};
use crate::net::stats::Stats;
use crate::rt;

/// How often a drain looks whether the sessions are gone.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// After a drain, how long sessions told to close are given to end and log.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The admin listener's name among the owners of sockets.
const ADMIN: &str = "[admin]";

/// The admin listener's address as a listen set.
fn admin_listen(addr: &str) -> Listen {
    Listen {
        tcp: vec![addr.to_owned()],
        udp: vec![],
    }
}

/// `listens` as [`Sockets`] takes them.
fn owned(listens: &[(String, Listen)]) -> Vec<(&str, &Listen)> {
    listens.iter().map(|(o, l)| (o.as_str(), l)).collect()
}

/// What `serve` is asked to do besides the file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where to write the process id (for `switchboard reload`), removed at exit.
    pub pid_file: Option<PathBuf>,
}

/// A config file's services, built and checked: every problem with its line.
pub struct Checked {
    pub file: File,
    pub services: Vec<(ServiceSpec, Box<dyn Service>)>,
}

impl Checked {
    /// Every listen set with its owner: the services', then the admin listener's.
    fn listens(&self) -> Vec<(String, Listen)> {
        let mut all: Vec<(String, Listen)> = self
            .services
            .iter()
            .map(|(spec, s)| (spec.name.clone(), s.listen()))
            .collect();
        if let Some((addr, _)) = &self.file.admin {
            all.push((ADMIN.to_owned(), admin_listen(addr)));
        }
        all
    }
}

/// Reads `path` and builds every service in it with `server`'s roles. Also an error:
/// two services (or a service and the admin listener) on one address.
pub fn check(server: &Server, path: &Path) -> std::result::Result<Checked, Problems> {
    let problems = |list| Problems {
        path: path.to_owned(),
        list,
    };
    let file = config::read(path)?;
    let mut list = Vec::new();
    let mut services = Vec::new();
    for (i, spec) in file.services.iter().enumerate() {
        if file.services[..i].iter().any(|s| s.name == spec.name) {
            list.push(Problem {
                line: Some(spec.name_line),
                service: None,
                key: None,
                message: format!(
                    "two services are named {:?} (give each a unique name = \"...\")",
                    spec.name
                ),
            });
        }
        match server.build(spec) {
            Ok(service) => services.push((spec.clone(), service)),
            Err(mut p) => list.append(&mut p),
        }
    }
    let checked = Checked { file, services };
    // The addresses of the services that built, so one run reports both kinds.
    list.append(&mut address_problems(&checked));
    list.sort_by_key(|p| p.line);
    if list.is_empty() {
        Ok(checked)
    } else {
        Err(problems(list))
    }
}

/// Addresses that cannot be resolved, and any two uses of one address and transport.
fn address_problems(checked: &Checked) -> Vec<Problem> {
    /// Who uses an address: a service (by name), or the admin listener.
    #[derive(Clone, PartialEq, Eq)]
    enum Owner {
        Service(String),
        Admin,
    }
    impl Owner {
        fn describe(&self) -> String {
            match self {
                Owner::Service(name) => format!("service {name:?}'s"),
                Owner::Admin => "the admin listener's".into(),
            }
        }
    }
    let mut problems = Vec::new();
    let mut used: HashMap<(bool, SocketAddr), Owner> = HashMap::new();
    let mut uses: Vec<(Owner, Option<&ServiceSpec>, bool, String)> = Vec::new();
    for (spec, service) in &checked.services {
        let listen = service.listen();
        for a in listen.tcp {
            uses.push((Owner::Service(spec.name.clone()), Some(spec), true, a));
        }
        for a in listen.udp {
            uses.push((Owner::Service(spec.name.clone()), Some(spec), false, a));
        }
    }
    if let Some((addr, _)) = &checked.file.admin {
        uses.push((Owner::Admin, None, true, addr.clone()));
    }
    for (owner, spec, tcp, addr) in uses {
        let transport = if tcp { "TCP" } else { "UDP" };
        let line = match spec {
            Some(spec) => if tcp {
                spec.line_of("tcp").or(spec.line_of("listen"))
            } else {
                spec.line_of("udp")
            }
            .or(Some(spec.line)),
            None => checked.file.admin.as_ref().map(|(_, l)| *l),
        };
        let problem = |message: String| {
            let p = Problem {
                line,
                service: None,
                key: None,
                message,
            };
            match spec {
                Some(spec) => p.in_service(&spec.name),
                None => p.with_key("admin.listen"),
            }
        };
        let resolved = match addr.to_socket_addrs() {
            Ok(mut list) => list.next(),
            Err(e) => {
                problems.push(problem(format!(
                    "cannot listen on {addr} ({transport}): {e}"
                )));
                continue;
            }
        };
        let Some(resolved) = resolved.filter(|a| a.port() != 0) else {
            continue; // port 0: a fresh port each time
        };
        let clash = used
            .iter()
            .find(|((t, a), o)| *t == tcp && overlap(*a, resolved) && **o != owner);
        match clash {
            Some((_, other)) => problems.push(problem(format!(
                "{addr} ({transport}) is also {}",
                other.describe()
            ))),
            None => {
                used.insert((tcp, resolved), owner);
            }
        }
    }
    problems
}

/// Whether binding `a` and `b` collide: the same address, or the same port where one
/// is a wildcard (`0.0.0.0` takes the port on every IPv4 address; `[::]`, on Linux by
/// default, on every address).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && (a == b || covers(a, b) || covers(b, a))
}

/// Tries to bind every address of `checked` (and lets go at once): `check` reports an
/// address in use the way `serve` would meet it.
pub async fn probe_addresses(checked: &Checked) -> Vec<String> {
    // All in one set, held until the end, so that addresses that overlap collide here
    // as they would in `serve`.
    let mut all = Sockets::new();
    let mut failed = Vec::new();
    for (owner, listen) in checked.listens() {
        if let Err(e) = all.bind(&[(&owner, &listen)]).await {
            let who = if owner == ADMIN {
                "admin.listen".to_owned()
            } else {
                format!("service {owner:?}")
            };
            failed.push(format!("{who}: {e}"));
        }
    }
    failed
}

/// One running service.
struct Running {
    spec: ServiceSpec,
    service: Box<dyn Service>,
    stats: Arc<Stats>,
    state: Arc<OnceLock<Arc<dyn std::any::Any + Send + Sync>>>,
    /// Retires the current generation.
    retire: Trigger,
    /// Stops the service (every generation).
    shutdown: Trigger,
    shutdown_rx: Shutdown,
    close: Trigger,
    close_rx: Shutdown,
    up: Arc<AtomicBool>,
    started: SystemTime,
}

/// A service being drained (removed by a reload, or at the end).
#[derive(Clone)]
struct Draining {
    name: String,
    stats: Arc<Stats>,
    /// Taken by whoever closes it first: the drain's own timer, or the end of the process.
    /// The second trigger fires [`Draining::logged`] once its summary is written.
    close: Arc<Mutex<Option<(Trigger, Trigger)>>>,
    /// Fires when the service's summary line has been logged.
    logged: Shutdown,
    deadline: Instant,
}

impl Draining {
    /// Whether its last session has ended (or it was closed and logged).
    fn is_done(&self) -> bool {
        self.stats.live_tasks() == 0
            || self
                .close
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
    }

    /// Closes what is left (once), waits up to [`CLOSE_WAIT`] for it, and logs the
    /// service's summary. When another caller is doing that already, waits until it has
    /// logged, so that the end of the process never cuts a summary line off.
    async fn close_now(&self) {
        let taken = self.close.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((close, logged)) = taken else {
            self.logged.wait().await; // closed by another: its summary comes (or came)
            return;
        };
        let left = self.stats.live_tasks();
        if left > 0 {
            log::warn!(service = self.name.as_str(), tasks = left; "closing connections that did not finish in time");
        }
        close.fire();
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.stats.live_tasks() > 0 && Instant::now() < deadline {
            rt::sleep(DRAIN_POLL).await;
        }
        log::info!(service = self.name.as_str(); "stopped: {}", self.stats.summary());
        logged.fire();
    }
}

/// The admin listener, when there is one.
struct Admin {
    addr: String,
    stop: Trigger,
}

/// The running set.
struct Supervisor {
    sockets: Sockets,
    services: BTreeMap<String, Running>,
    draining: Vec<Draining>,
    admin: Option<Admin>,
    published: Services,
}

/// Serves the services of the file at `path` until SIGINT or SIGTERM; SIGHUP reloads it.
pub async fn serve(server: Server, path: &Path, options: Options) -> Result<()> {
    let checked = check(&server, path)?;
    let mut signals = rt::Signals::with_reload()?;
    let mut sockets = Sockets::new();
    let listens = checked.listens();
    systemd::adopt(&mut sockets, &owned(&listens));
    sockets.bind(&owned(&listens)).await?;
    let mut sup = Supervisor {
        sockets,
        services: BTreeMap::new(),
        draining: Vec::new(),
        admin: None,
        published: Services::default(),
    };
    for (spec, service) in checked.services {
        sup.start_fresh(spec, service)?;
    }
    sup.move_admin(checked.file.admin.as_ref().map(|(a, _)| a.as_str()))?;
    sup.publish();
    if let Some(pid_file) = &options.pid_file {
        // Whole or not at all: written aside, then renamed over the old one.
        let mut aside = pid_file.clone().into_os_string();
        aside.push(".new");
        std::fs::write(&aside, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&aside, pid_file))
            .map_err(|e| format!("cannot write the pid file {}: {e}", pid_file.display()))?;
    }
    if sup.services.is_empty() {
        log::warn!(config = path.display().to_string().as_str(); "the file lists no service");
    }
    log::info!(services = sup.services.len(), config = path.display().to_string().as_str(); "serving");
    systemd::notify("READY=1");
    loop {
        match signals.next().await {
            "SIGHUP" => {
                systemd::notify(&systemd::reloading());
                sup.reload(&server, path).await;
                systemd::notify("READY=1");
            }
            signal => {
                log::info!(signal = signal; "shutting down");
                break;
            }
        }
    }
    systemd::notify("STOPPING=1");
    sup.stop_all(&mut signals).await;
    if let Some(pid_file) = &options.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(())
}

impl Supervisor {
    /// Starts `service` as a new running service (its sockets are bound).
    fn start_fresh(&mut self, spec: ServiceSpec, service: Box<dyn Service>) -> Result<()> {
        let (shutdown, shutdown_rx) = shutdown::channel();
        let (close, close_rx) = shutdown::channel();
        let (retire, retire_rx) = shutdown::channel();
        let running = Running {
            spec,
            service,
            stats: Stats::new(),
            state: Arc::new(OnceLock::new()),
            retire,
            shutdown,
            shutdown_rx,
            close,
            close_rx,
            up: Arc::new(AtomicBool::new(true)),
            started: SystemTime::now(),
        };
        self.start_generation(&running, retire_rx)?;
        self.services.insert(running.spec.name.clone(), running);
        Ok(())
    }

    /// Starts a generation of `running.service`, retired when `retire` fires.
    fn start_generation(&self, running: &Running, retire: Shutdown) -> Result<()> {
        let listen = running.service.listen();
        let (tcp, udp) = self.sockets.for_service(&running.spec.name, &listen)?;
        let generation = Generation {
            tcp,
            udp,
            stats: running.stats.clone(),
            shutdown: running.shutdown_rx.clone(),
            close: running.close_rx.clone(),
            retire: retire.clone(),
            state: running.state.clone(),
        };
        let work = running.service.start(generation);
        let (up, shutdown, name) = (
            running.up.clone(),
            running.shutdown_rx.clone(),
            running.spec.name.clone(),
        );
        up.store(true, Ordering::Relaxed);
        rt::spawn(async move {
            work.await;
            if !retire.is_fired() && !shutdown.is_fired() {
                up.store(false, Ordering::Relaxed);
                log::error!(service = name.as_str(); "service stopped serving on its own");
            }
        });
        Ok(())
    }

    /// Reads the file again and applies it; if it is invalid or an address cannot be
    /// bound, nothing changes and the log says why.
    async fn reload(&mut self, server: &Server, path: &Path) {
        log::info!(config = path.display().to_string().as_str(); "reloading");
        let checked = match check(server, path) {
            Ok(checked) => checked,
            Err(problems) => {
                for line in problems.to_string().lines() {
                    log::error!(problem = line; "reload refused; nothing changed");
                }
                return;
            }
        };
        let listens = checked.listens();
        let listen_refs = owned(&listens);
        if let Err(e) = self.sockets.bind(&listen_refs).await {
            log::error!(error = e.to_string().as_str(); "reload refused; nothing changed");
            return;
        }
        let mut old = std::mem::take(&mut self.services);
        let (mut added, mut changed, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for (spec, service) in checked.services {
            let name = spec.name.clone();
            let result = match old.remove(&name) {
                Some(running) if running.spec == spec => {
                    self.services.insert(name.clone(), running);
                    Ok(())
                }
                Some(mut running)
                    if running.spec.role == spec.role
                        && service.takes_over(&running.service.listen()) =>
                {
                    // The new generation accepts before the old one stops.
                    let (retire, retire_rx) = shutdown::channel();
                    let previous = std::mem::replace(&mut running.service, service);
                    match self.start_generation(&running, retire_rx) {
                        Ok(()) => {
                            std::mem::replace(&mut running.retire, retire).fire();
                            running.spec = spec;
                            changed.push(name.clone());
                        }
                        Err(e) => {
                            running.service = previous;
                            log::error!(service = name.as_str(), error = e.to_string().as_str(); "could not start the new configuration; the old one stays");
                        }
                    }
                    self.services.insert(name.clone(), running);
                    Ok(())
                }
                Some(running) => {
                    self.stop(running);
                    changed.push(name.clone());
                    self.start_fresh(spec, service)
                }
                None => {
                    added.push(name.clone());
                    self.start_fresh(spec, service)
                }
            };
            if let Err(e) = result {
                log::error!(service = name.as_str(), error = e.to_string().as_str(); "could not start");
            }
        }
        for (name, running) in old {
            removed.push(name);
            self.stop(running);
        }
        if let Err(e) = self.move_admin(checked.file.admin.as_ref().map(|(a, _)| a.as_str())) {
            log::error!(error = e.to_string().as_str(); "could not move the admin listener");
        }
        self.sockets.keep_only(&listen_refs);
        self.publish();
        log::info!(
            added = added.join(",").as_str(),
            changed = changed.join(",").as_str(),
            removed = removed.join(",").as_str(),
            services = self.services.len();
            "reloaded"
        );
    }

    /// Starts, moves or stops the admin listener to serve on `addr`.
    fn move_admin(&mut self, addr: Option<&str>) -> Result<()> {
        if self.admin.as_ref().map(|a| a.addr.as_str()) == addr {
            return Ok(());
        }
        if let Some(old) = self.admin.take() {
            old.stop.fire();
        }
        if let Some(addr) = addr {
            let (mut tcp, _) = self.sockets.for_service(ADMIN, &admin_listen(addr))?;
            let (stop, stop_rx) = shutdown::channel();
            let listener = tcp.pop().expect("one address asked for");
            // On a thread of its own: a flood of scrapes competes with the services for
            // the CPU as one thread does, never inside their connection threads' queues.
            let published = self.published.clone();
            rt::spawn_pinned_thread("admin".into(), move || {
                admin::run(listener, published, stop_rx)
            })?;
            self.admin = Some(Admin {
                addr: addr.to_owned(),
                stop,
            });
        }
        Ok(())
    }

    /// Stops a service: its sessions are drained for its drain time, then closed.
    fn stop(&mut self, running: Running) {
        log::info!(service = running.spec.name.as_str(); "stopping");
        let (logged_trigger, logged) = shutdown::channel();
        let draining = Draining {
            name: running.spec.name,
            stats: running.stats,
            close: Arc::new(Mutex::new(Some((running.close, logged_trigger)))),
            logged,
            deadline: Instant::now() + running.service.drain(),
        };
        running.shutdown.fire();
        drop(running.retire);
        // Kept until its summary is written: `stop_all` waits for every one of them.
        self.draining.retain(|d| !d.logged.is_fired());
        self.draining.push(draining.clone());
        rt::spawn(async move {
            while !draining.is_done() && Instant::now() < draining.deadline {
                rt::sleep(DRAIN_POLL).await;
            }
            draining.close_now().await;
        });
    }

    /// What the admin listener shows.
    fn publish(&self) {
        let list = self
            .services
            .values()
            .map(|r| {
                let (tcp, udp) = self.sockets.local(&r.spec.name, &r.service.listen());
                ServiceInfo {
                    name: r.spec.name.clone(),
                    role: r.spec.role.clone(),
                    stats: r.stats.clone(),
                    up: r.up.clone(),
                    started: r.started,
                    tcp,
                    udp,
                }
            })
            .collect();
        *self.published.lock() = list;
    }

    /// At SIGINT or SIGTERM: every service drains at once, each for its own drain time
    /// (a second signal cuts all short), then what is left is closed; one summary line
    /// per service.
    async fn stop_all(mut self, signals: &mut rt::Signals) {
        if let Some(admin) = self.admin.take() {
            admin.stop.fire();
        }
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            if let Some(running) = self.services.remove(&name) {
                self.stop(running);
            }
        }
        let draining = self.draining;
        let drained = async {
            while draining
                .iter()
                .any(|d| !d.is_done() && Instant::now() < d.deadline)
            {
                rt::sleep(DRAIN_POLL).await;
            }
        };
        // A SIGHUP now (a `switchboard reload` from a cron job or logrotate) is not a
        // second SIGTERM: it must not cut the drain short.
        let second = async {
            while signals.next().await == "SIGHUP" {
                log::info!("SIGHUP while stopping: no reload, the drain goes on");
            }
        };
        futures::select! {
            _ = drained.fuse() => {}
            _ = second.fuse() => log::warn!("second signal: closing at once"),
        }
        futures::future::join_all(draining.iter().map(Draining::close_now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn wildcards_overlap_the_addresses_they_cover() {
        let a = |s: &str| s.parse().unwrap();
        assert!(overlap(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlap(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlap(a("127.0.0.1:80"), a("[::]:80")));
        assert!(overlap(a("[::]:80"), a("[::1]:80")));
        assert!(!overlap(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!overlap(a("0.0.0.0:80"), a("127.0.0.1:81")));
        assert!(!overlap(a("127.0.0.1:80"), a("127.0.0.2:80")));
    }
}
