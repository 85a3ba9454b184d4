//! The HTTP role's counters: responses by status class, response time, bytes sent from
//! files.
//!
//! Counted when the writer reports a response (the access line's moment: its last byte
//! acknowledged by the client, or how far it got), a few relaxed adds per response. The
//! series are listed in [`crate::metrics`].

use std::time::Duration;

use crate::net::stats::meters::{Collect, Counter, Family, Histogram, Kind, RoleMetrics, Value};

/// `switchboard_http_responses_total{code}`.
pub static RESPONSES: Family = Family {
    name: "switchboard_http_responses",
    help: "Responses written (wholly or in part), by status class; the 503 a client over --max-conns gets is counted as a refused connection instead.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_http_response_time_seconds`.
pub static RESPONSE_TIME: Family = Family {
    name: "switchboard_http_response_time",
    help: "From a complete request head to its response's last byte acknowledged by the client (or the write's end).",
    kind: Kind::Histogram,
    seconds: true,
};

/// `switchboard_http_sendfile_bytes_total`.
pub static SENDFILE_BYTES: Family = Family {
    name: "switchboard_http_sendfile_bytes",
    help: "Body bytes sent from files by sendfile (a small file's body goes with its head, copied, and is not counted).",
    kind: Kind::Counter,
    seconds: false,
};

/// The `code` label of each status class, `1xx` to `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Buckets of the response time: a cached small file answers in tens of microseconds, a
/// large one takes as long as the client takes to read it.
const RESPONSE_BUCKETS: &[Duration] = &[
    Duration::from_micros(100),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

/// One HTTP service's counters.
#[derive(Debug)]
pub struct HttpMetrics {
    /// By [`CLASSES`].
    pub responses: [Counter; 5],
    pub response_time: Histogram,
    pub sendfile_bytes: Counter,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            responses: Default::default(),
            response_time: Histogram::new(RESPONSE_BUCKETS),
            sendfile_bytes: Counter::default(),
        }
    }
}

impl HttpMetrics {
    /// Counts a response of `status` (100-599; anything else is not counted).
    pub fn response(&self, status: u16) {
        if let Some(class) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(usize::from(i)))
        {
            class.inc();
        }
    }
}

impl RoleMetrics for HttpMetrics {
    fn collect(&self, out: &mut dyn Collect) {
        for (code, n) in CLASSES.into_iter().zip(&self.responses) {
            out.series(&RESPONSES, &[("code", code)], Value::Counter(n.get()));
        }
        let time = Value::Histogram(self.response_time.snapshot());
        out.series(&RESPONSE_TIME, &[], time);
        out.series(
            &SENDFILE_BYTES,
            &[],
            Value::Counter(self.sendfile_bytes.get()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_count_in_their_class() {
        let m = HttpMetrics::default();
        for status in [200, 206, 304, 404, 408, 503, 99, 600] {
            m.response(status);
        }
        let counts: Vec<u64> = m.responses.iter().map(Counter::get).collect();
        assert_eq!(counts, [0, 2, 1, 2, 1]);
    }
}
