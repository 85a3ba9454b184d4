//! TEMPORARY: the interface of the metrics module, until its branch is merged.

use std::sync::Arc;
use std::time::SystemTime;

use crate::net::stats::Stats;

/// The Content-Type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A service as the metrics see it.
pub struct ServiceView<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub stats: &'a Arc<Stats>,
    pub up: bool,
    pub started: SystemTime,
}

/// The services' metrics as Prometheus text.
pub fn render(services: &[ServiceView<'_>]) -> String {
    let mut out = String::from("# TYPE switchboard_up gauge\n");
    for s in services {
        out += &format!(
            "switchboard_up{{service=\"{}\",role=\"{}\"}} {}\n",
            s.name,
            s.role,
            u8::from(s.up)
        );
    }
    out
}
