//! The built-in roles as services: each is its subcommand's options (`crate::options`)
//! and the same run function the subcommand uses, with the generation's sockets.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Generation, Listen, RoleService, Server, Service, listeners, with_tls};
use crate::Result;
use crate::net::listener::ServerConfig;
use crate::net::shutdown::Shutdown;
use crate::options::{ChatArgs, HelloArgs, HttpArgs, ProxyArgs, Transports};
use crate::roles::chat::{self, ChatState, broker::ChatConfig};
use crate::roles::proxy;
use crate::roles::{discard, echo, hello, http, upper};
use crate::service::Addrs;

/// Adds the built-in roles to `server`.
pub(super) fn register(server: Server) -> Server {
    server
        .service("chat", |args: ChatArgs| {
            if args.web.is_some() {
                return Err("web: not yet served under serve; run `switchboard chat --web ADDR` on its own".into());
            }
            let (addrs, server, chat) = args.config()?;
            Ok(Box::new(Chat {
                addrs,
                server,
                chat,
            }) as Box<dyn Service>)
        })
        .service("echo", |t: Transports| {
            role(echo::Echo, t.addrs(echo::DEFAULT_ADDR), &t)
        })
        .service("upper", |t: Transports| {
            role(upper::Upper, t.addrs(upper::DEFAULT_ADDR), &t)
        })
        .service("discard", |t: Transports| {
            role(discard::Discard, t.addrs(discard::DEFAULT_ADDR), &t)
        })
        .service("hello", |h: HelloArgs| {
            Ok(Box::new(RoleService {
                role: Arc::new(hello::Hello::new(&h.message)),
                addrs: Addrs::tcp(&h.tcp),
                server: h.server.config_owned()?,
            }) as Box<dyn Service>)
        })
        .service("http", |h: HttpArgs| {
            Ok(Box::new(Http {
                listen: h.listen.clone(),
                server: h.server.config_owned()?,
                http: h.config()?,
            }) as Box<dyn Service>)
        })
        .service("proxy", |p: ProxyArgs| -> Result<Box<dyn Service>> {
            if p.threads.is_some() {
                return Err("--threads is not for serve: every service's sessions run on the process's connection threads, one per core".into());
            }
            // The checks, once now rather than at each start.
            if p.udp {
                p.udp_config()?;
            } else {
                p.config()?;
            }
            Ok(Box::new(Proxy(p)))
        })
}

/// A built-in [`crate::role::Role`] on the addresses of its `--tcp`/`--udp`.
fn role<R: crate::role::NewSession>(
    role: R,
    addrs: Addrs,
    t: &Transports,
) -> Result<Box<dyn Service>> {
    Ok(Box::new(RoleService {
        role: Arc::new(role),
        addrs,
        server: t.server.config_owned()?,
    }))
}

/// The chat: its broker (and with it every user) is the service's state, so a
/// reload that keeps its UDP address changes its limits without dropping anyone.
struct Chat {
    addrs: Addrs,
    server: ServerConfig,
    chat: ChatConfig,
}

impl Service for Chat {
    fn listen(&self) -> Listen {
        Listen {
            tcp: with_tls(self.addrs.tcp.iter().cloned().collect(), &self.server),
            udp: self.addrs.udp.iter().cloned().collect(),
        }
    }

    fn takes_over(&self, running: &Listen) -> bool {
        // The broker answers UDP users through the socket it started with.
        running.udp == self.listen().udp
    }

    fn start(&self, mut g: Generation) -> BoxFuture<'static, ()> {
        let server = ServerConfig {
            retire: Some(g.retire.clone()),
            ..self.server.clone()
        };
        let chat = self.chat.clone();
        let generation = ChatState::next_generation(g.state::<ChatState>());
        Box::pin(async move {
            chat::run_generation(
                listeners(g.tcp, &server),
                g.udp.pop(),
                None,
                server,
                chat,
                g.stats,
                g.shutdown,
                generation,
            )
            .await;
        })
    }
}

/// The static-file server.
struct Http {
    listen: String,
    server: ServerConfig,
    http: http::HttpConfig,
}

impl Service for Http {
    fn listen(&self) -> Listen {
        Listen {
            tcp: with_tls(vec![self.listen.clone()], &self.server),
            udp: vec![],
        }
    }

    fn start(&self, g: Generation) -> BoxFuture<'static, ()> {
        let server = ServerConfig {
            retire: Some(g.retire.clone()),
            close_now: Some(g.close.clone()),
            ..self.server.clone()
        };
        Box::pin(http::run(
            listeners(g.tcp, &server),
            server,
            self.http.clone(),
            g.stats,
            g.shutdown,
        ))
    }
}

/// The proxy, on every `listen` address; its sessions run on the connection threads.
struct Proxy(ProxyArgs);

impl Service for Proxy {
    fn listen(&self) -> Listen {
        if self.0.udp {
            return Listen {
                tcp: vec![],
                udp: self.0.listen.clone(),
            };
        }
        Listen {
            tcp: {
                let mut tcp = self.0.listen.clone();
                tcp.extend(self.0.server.tls_listen.iter().cloned());
                tcp
            },
            udp: vec![],
        }
    }

    fn drain(&self) -> Duration {
        self.0.drain
    }

    fn start(&self, g: Generation) -> BoxFuture<'static, ()> {
        if self.0.udp {
            return match self.0.udp_config() {
                // A retired generation stops receiving; its flows' replies still go out
                // until they idle, and their clients' next datagrams start new flows.
                Ok(config) => {
                    let stop = Shutdown::either(&g.shutdown, &g.retire);
                    let run = proxy::udp::run_generation(g.udp, config, g.stats, stop, g.shutdown);
                    Box::pin(run)
                }
                Err(e) => {
                    log::error!(error = e.to_string().as_str(); "proxy: cannot start");
                    Box::pin(async {})
                }
            };
        }
        let (server, config) = match self.0.config() {
            Ok(config) => config,
            Err(e) => {
                // Checked when the service was built; this is for completeness.
                log::error!(error = e.to_string().as_str(); "proxy: cannot start");
                return Box::pin(async {});
            }
        };
        let server = ServerConfig {
            retire: Some(g.retire.clone()),
            close_now: Some(g.close.clone()),
            ..server
        };
        let tcp = listeners(g.tcp, &server);
        Box::pin(proxy::run_many(tcp, server, config, g.stats, g.shutdown))
    }
}
