//! Prometheus metrics for the services a process runs, as the OpenMetrics text format
//! (what `GET /metrics` on the admin listener answers).
//!
//! Nothing here counts. Every counter lives where it is counted: the plumbing's in each
//! service's [`Stats`] (connections, refusals, bytes, datagrams), a role's in the object
//! it keeps there ([`Stats::role_metrics`]: chat, proxy and HTTP each have one, in
//! `roles/*/metrics.rs`). [`render`] reads them all when asked, adds the labels
//! `service` and `role` to every series, and groups each family's series across
//! services, as the format requires. Try it with the admin listener:
//! `curl -s http://ADMIN/metrics`.
//!
//! | series | kind | labels | what |
//! |---|---|---|---|
//! | `switchboard_up` | gauge | | 1 while the service runs |
//! | `switchboard_start_time_seconds` | gauge | | when it started (Unix time) |
//! | `switchboard_current_connections` | gauge | | TCP connections open |
//! | `switchboard_connections_total` | counter | | TCP connections accepted and served |
//! | `switchboard_refused_connections_total` | counter | `reason`: `max_conns`, `denied`, `emfile`, `per_ip_conns`, `per_ip_rate` | TCP clients turned away (the last two: `--max-conns-per-ip`, `--conn-rate-per-ip`) |
//! | `switchboard_bytes_in_total`, `switchboard_bytes_out_total` | counter | | bytes read and written, TCP and UDP (the proxy's both sides) |
//! | `switchboard_datagrams_received_total` | counter | | UDP datagrams received |
//! | `switchboard_tls_handshake_failures_total` | counter | `reason`: `timeout`, `plaintext`, `closed`, `refused` | TLS handshakes that did not complete (0 for a service without TLS) |
//! | `switchboard_chat_users` | gauge | `transport`: `tcp`, `udp` | users joined |
//! | `switchboard_chat_rooms` | gauge | | rooms (the lobby once anyone has joined) |
//! | `switchboard_chat_lines_said_total` | counter | | lines said to a room or a nick |
//! | `switchboard_chat_deliveries_total` | counter | | lines queued for users (one per recipient) |
//! | `switchboard_chat_departures_total` | counter | `reason`: `closed`, `reset`, `quit`, `shutdown`, and the evictions `sendq`, `idle`, `udp_timeout` | users who left |
//! | `switchboard_chat_flood_dropped_total` | counter | | lines dropped by flood control |
//! | `switchboard_proxy_upstream_up` | gauge | `upstream` | 1 unless in back-off or (`--check-interval`) held down by its health checks |
//! | `switchboard_proxy_upstream_sessions` | gauge | `upstream` | sessions open to it |
//! | `switchboard_proxy_upstream_connect_failures_total` | counter | `upstream` | connects it failed |
//! | `switchboard_proxy_upstream_check_failures_total` | counter | `upstream` | health checks it failed (`--check-interval`; a local shortage of descriptors not counted) |
//! | `switchboard_proxy_upstream_connect_time_seconds` | histogram | `upstream` | time to connect |
//! | `switchboard_proxy_sessions_total` | counter | `upstream`, `end`: `client_fin`, `server_fin`, `client_reset`, `server_reset`, `idle_timeout`, `fin_timeout`, `shutdown` | sessions ended, by the session line's `cut_by` when the proxy cut it (a timeout, the drain), else its `closed_first` |
//! | `switchboard_proxy_unconnected_total` | counter | `reason`: `no_upstream`, `local`, `no_hello`, `no_route` | clients closed without an upstream (`no_upstream`: none answered, or the health checks hold every one down; the last two: routing by SNI) |
//! | `switchboard_http_responses_total` | counter | `code`: `1xx`…`5xx` | responses written |
//! | `switchboard_http_response_time_seconds` | histogram | | from the request to its last byte acknowledged |
//! | `switchboard_http_sendfile_bytes_total` | counter | | body bytes sent from files |

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::net::stats::Stats;
use crate::net::stats::meters::{Collect, Family, Kind, Value};

/// The Content-Type of what [`render`] returns: OpenMetrics 1.0 text (which Prometheus
/// asks for first, and which ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One service as [`render`] shows it.
pub struct ServiceView<'a> {
    /// The service's name (the `service` label); unique among the services rendered.
    pub name: &'a str,
    /// Its role (the `role` label): `echo`, `chat`, `proxy`, `http`, ...
    pub role: &'a str,
    /// Its counters, kept for the service's life (across reloads).
    pub stats: &'a Arc<Stats>,
    /// Whether it is running now.
    pub up: bool,
    /// When it started.
    pub started: SystemTime,
}

/// `switchboard_up`.
pub static UP: Family = Family {
    name: "switchboard_up",
    help: "Whether the service is running (1) or not (0).",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_start_time_seconds`.
pub static START_TIME: Family = Family {
    name: "switchboard_start_time",
    help: "When the service started, in seconds since the Unix epoch.",
    kind: Kind::Gauge,
    seconds: true,
};

/// `switchboard_current_connections`.
pub static CURRENT_CONNECTIONS: Family = Family {
    name: "switchboard_current_connections",
    help: "TCP connections open now.",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_connections_total`.
pub static CONNECTIONS: Family = Family {
    name: "switchboard_connections",
    help: "TCP connections accepted and served.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_refused_connections_total{reason}`.
pub static REFUSED: Family = Family {
    name: "switchboard_refused_connections",
    help: "TCP clients turned away: over --max-conns, denied by an access list, accepts that failed for want of descriptors, or over a per-client limit (--max-conns-per-ip, --conn-rate-per-ip).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_bytes_in_total`.
pub static BYTES_IN: Family = Family {
    name: "switchboard_bytes_in",
    help: "Bytes read from peers, TCP and UDP (a proxy counts both its sides).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_bytes_out_total`.
pub static BYTES_OUT: Family = Family {
    name: "switchboard_bytes_out",
    help: "Bytes written to peers, TCP and UDP (a proxy counts both its sides).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_datagrams_received_total`.
pub static DATAGRAMS: Family = Family {
    name: "switchboard_datagrams_received",
    help: "UDP datagrams received.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_tls_handshake_failures_total{reason}`.
pub static TLS_HANDSHAKE_FAILURES: Family = Family {
    name: "switchboard_tls_handshake_failures",
    help: "TLS handshakes that did not complete: not finished within --tls-handshake-timeout, plain text to a TLS port, the client closed, or the handshake failed.",
    kind: Kind::Counter,
    seconds: false,
};

/// The services' metrics as OpenMetrics text ([`CONTENT_TYPE`]), ending with `# EOF`.
///
/// Reads each service's counters once, with relaxed loads: a series read while traffic
/// flows may be a few messages behind another, never ahead of what happened. Costs an
/// allocation per series, on the scraper's time.
pub fn render(services: &[ServiceView<'_>]) -> String {
    let mut gathered = Gathered::default();
    for service in services {
        gathered.service = [
            ("service", service.name.to_owned()),
            ("role", service.role.to_owned()),
        ];
        common(service, &mut gathered);
        service.stats.collect_role(&mut gathered);
    }
    let mut registry = Registry::default();
    registry.register_collector(Box::new(gathered));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing into a String cannot fail; an encoder that refuses a value would.
        log::error!(error = e.to_string().as_str(); "metrics: encoding failed");
    }
    out
}

/// The series every service has, from its [`Stats`] and its view.
fn common(service: &ServiceView<'_>, out: &mut dyn Collect) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = service.stats;
    let counter = |n: &std::sync::atomic::AtomicU64| Value::Counter(n.load(Relaxed));
    out.series(&UP, &[], Value::Gauge(i64::from(service.up)));
    let started = service
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    out.series(&START_TIME, &[], Value::GaugeFloat(started));
    let open = i64::try_from(stats.active()).unwrap_or(i64::MAX);
    out.series(&CURRENT_CONNECTIONS, &[], Value::Gauge(open));
    out.series(&CONNECTIONS, &[], counter(&stats.served));
    let refused = &stats.refused;
    for (reason, n) in [
        ("max_conns", &refused.max_conns),
        ("denied", &refused.denied),
        ("emfile", &refused.emfile),
        ("per_ip_conns", &refused.per_ip_conns),
        ("per_ip_rate", &refused.per_ip_rate),
    ] {
        out.series(&REFUSED, &[("reason", reason)], counter(n));
    }
    out.series(&BYTES_IN, &[], counter(&stats.bytes_in));
    out.series(&BYTES_OUT, &[], counter(&stats.bytes_out));
    out.series(&DATAGRAMS, &[], counter(&stats.datagrams));
    for (reason, n) in stats.tls.by_reason() {
        out.series(&TLS_HANDSHAKE_FAILURES, &[("reason", reason)], counter(n));
    }
}

/// Labels of one series: `service` and `role`, then its own.
type Labels = Vec<(&'static str, String)>;

/// Every series read, grouped by family in the order families were first seen: the
/// format wants each family's series together, and services are read one by one.
#[derive(Debug, Default)]
struct Gathered {
    families: Vec<(&'static Family, Vec<(Labels, Value)>)>,
    /// The labels of the service being read.
    service: [(&'static str, String); 2],
}

impl Collect for Gathered {
    fn series(&mut self, family: &'static Family, labels: &[(&'static str, &str)], value: Value) {
        debug_assert!(
            matches!(
                (family.kind, &value),
                (Kind::Counter, Value::Counter(_))
                    | (Kind::Gauge, Value::Gauge(_) | Value::GaugeFloat(_))
                    | (Kind::Histogram, Value::Histogram(_))
            ),
            "{} given a {value:?}",
            family.name
        );
        let all: Labels = self
            .service
            .iter()
            .cloned()
            .chain(labels.iter().map(|&(k, v)| (k, v.to_owned())))
            .collect();
        match self
            .families
            .iter_mut()
            .find(|(f, _)| f.name == family.name)
        {
            Some((_, series)) => series.push((all, value)),
            None => self.families.push((family, vec![(all, value)])),
        }
    }
}

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let seconds = Unit::Seconds;
        for (family, series) in &self.families {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let unit = family.seconds.then_some(&seconds);
            let mut metric = encoder.encode_descriptor(family.name, family.help, unit, kind)?;
            for (labels, value) in series {
                let mut one = metric.encode_family(labels)?;
                match value {
                    Value::Counter(n) => one.encode_counter::<NoLabelSet, _, u64>(n, None)?,
                    Value::Gauge(n) => one.encode_gauge(n)?,
                    Value::GaugeFloat(x) => one.encode_gauge(x)?,
                    Value::Histogram(h) => {
                        one.encode_histogram::<NoLabelSet>(h.sum, h.count(), &h.buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stats::meters::{Counter, Histogram, RoleMetrics};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    static SAID: Family = Family {
        name: "test_said",
        help: "Lines said.",
        kind: Kind::Counter,
        seconds: false,
    };

    static WAIT: Family = Family {
        name: "test_wait",
        help: "Waits.",
        kind: Kind::Histogram,
        seconds: true,
    };

    const BOUNDS: &[Duration] = &[Duration::from_millis(1), Duration::from_millis(10)];

    #[derive(Debug)]
    struct TestRole {
        said: Counter,
        wait: Histogram,
    }

    impl Default for TestRole {
        fn default() -> Self {
            TestRole {
                said: Counter::default(),
                wait: Histogram::new(BOUNDS),
            }
        }
    }

    impl RoleMetrics for TestRole {
        fn collect(&self, out: &mut dyn Collect) {
            out.series(
                &SAID,
                &[("room", "a\"b\\c\nd")],
                Value::Counter(self.said.get()),
            );
            out.series(&WAIT, &[], Value::Histogram(self.wait.snapshot()));
        }
    }

    fn view<'a>(name: &'a str, role: &'a str, stats: &'a Arc<Stats>) -> ServiceView<'a> {
        ServiceView {
            name,
            role,
            stats,
            up: true,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
        }
    }

    #[test]
    fn one_service_renders_every_common_series_then_eof() {
        let stats = Stats::new();
        stats.bytes_in.store(7, Relaxed);
        stats.refused.denied.store(2, Relaxed);
        stats.refused.per_ip_rate.store(5, Relaxed);
        let text = render(&[view("e", "echo", &stats)]);
        let l = r#"service="e",role="echo""#;
        let want = format!(
            "# HELP switchboard_up Whether the service is running (1) or not (0).\n\
             # TYPE switchboard_up gauge\n\
             switchboard_up{{{l}}} 1\n\
             # HELP switchboard_start_time_seconds When the service started, in seconds since the Unix epoch.\n\
             # TYPE switchboard_start_time_seconds gauge\n\
             # UNIT switchboard_start_time_seconds seconds\n\
             switchboard_start_time_seconds{{{l}}} 1.5\n\
             # HELP switchboard_current_connections TCP connections open now.\n\
             # TYPE switchboard_current_connections gauge\n\
             switchboard_current_connections{{{l}}} 0\n\
             # HELP switchboard_connections TCP connections accepted and served.\n\
             # TYPE switchboard_connections counter\n\
             switchboard_connections_total{{{l}}} 0\n"
        );
        assert!(text.starts_with(&want), "{text}");
        assert!(text.contains(&format!(
            "switchboard_refused_connections_total{{{l},reason=\"denied\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "switchboard_refused_connections_total{{{l},reason=\"per_ip_conns\"}} 0\n\
             switchboard_refused_connections_total{{{l},reason=\"per_ip_rate\"}} 5\n"
        )));
        assert!(text.contains(&format!("switchboard_bytes_in_total{{{l}}} 7\n")));
        assert!(text.contains(&format!("switchboard_datagrams_received_total{{{l}}} 0\n")));
        assert!(text.contains(&format!(
            "switchboard_tls_handshake_failures_total{{{l},reason=\"timeout\"}} 0\n"
        )));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_family_is_written_once_with_every_services_series() {
        let (a, b) = (Stats::new(), Stats::new());
        a.served.store(3, Relaxed);
        b.served.store(4, Relaxed);
        let text = render(&[view("a", "echo", &a), view("b", "chat", &b)]);
        assert_eq!(
            text.matches("# TYPE switchboard_connections counter")
                .count(),
            1
        );
        let at = text.find("# TYPE switchboard_connections counter").unwrap();
        let lines: Vec<&str> = text[at..].lines().take(3).collect();
        assert_eq!(
            lines[1..],
            [
                r#"switchboard_connections_total{service="a",role="echo"} 3"#,
                r#"switchboard_connections_total{service="b",role="chat"} 4"#,
            ]
        );
    }

    #[test]
    fn role_series_carry_the_service_labels_escaped_and_histograms_cumulate() {
        let stats = Stats::new();
        let role = stats.role_metrics::<TestRole>();
        role.said.add(5);
        role.wait.observe(Duration::from_micros(500));
        role.wait.observe(Duration::from_millis(20));
        // The same object on a second start (a reload).
        assert!(Arc::ptr_eq(&role, &stats.role_metrics::<TestRole>()));
        let text = render(&[view("we \"quote\"", "test", &stats)]);
        let l = r#"service="we \"quote\"",role="test""#;
        assert!(
            text.contains(&format!(
                "test_said_total{{{l},room=\"a\\\"b\\\\c\\nd\"}} 5\n"
            )),
            "{text}"
        );
        for line in [
            format!("test_wait_seconds_sum{{{l}}} 0.0205"),
            format!("test_wait_seconds_count{{{l}}} 2"),
            // (The encoder puts `le` first.)
            format!("test_wait_seconds_bucket{{le=\"0.001\",{l}}} 1"),
            format!("test_wait_seconds_bucket{{le=\"0.01\",{l}}} 1"),
            format!("test_wait_seconds_bucket{{le=\"+Inf\",{l}}} 2"),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing from {text}"
            );
        }
    }

    #[test]
    fn a_role_of_another_type_replaces_the_counters() {
        #[derive(Debug, Default)]
        struct Other;
        impl RoleMetrics for Other {
            fn collect(&self, _out: &mut dyn Collect) {}
        }
        let stats = Stats::new();
        stats.role_metrics::<TestRole>().said.inc();
        stats.role_metrics::<Other>();
        let text = render(&[view("s", "other", &stats)]);
        assert!(!text.contains("test_said"), "{text}");
    }
}
