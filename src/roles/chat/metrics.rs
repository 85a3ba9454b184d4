//! The chat's counters: users, rooms, lines said and delivered, departures, flood drops.
//!
//! Only the broker writes them (it is the one task that knows), so each is a relaxed add
//! by one thread; deliveries (one per recipient of a line) and the gauges are added once
//! per broker turn, what the turn changed. They are held
//! by the service's `Stats` ([`Stats::role_metrics`](crate::net::stats::Stats::role_metrics)),
//! so a chat restarted on the same counters carries on counting; each broker adds to the
//! gauges what it holds and takes it back when it ends. The series are listed in
//! [`crate::metrics`].

use super::broker::LeaveReason;
use crate::net::stats::meters::{Collect, Counter, Family, Gauge, Kind, RoleMetrics, Value};

/// `switchboard_chat_users{transport}`.
pub static USERS: Family = Family {
    name: "switchboard_chat_users",
    help: "Users joined now, by transport.",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_chat_rooms`.
pub static ROOMS: Family = Family {
    name: "switchboard_chat_rooms",
    help: "Rooms now (the lobby stays once anyone has joined).",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_chat_lines_said_total`.
pub static SAID: Family = Family {
    name: "switchboard_chat_lines_said",
    help: "Lines users said to a room (plain and /me) or to a nick (/msg), past flood control.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_chat_deliveries_total`.
pub static DELIVERIES: Family = Family {
    name: "switchboard_chat_deliveries",
    help: "Lines queued for users, one per recipient: said lines, notices, welcomes and replies (not challenges to addresses that have not joined; not lines a full queue refused).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_chat_departures_total{reason}`.
pub static DEPARTURES: Family = Family {
    name: "switchboard_chat_departures",
    help: "Users who left, by why; sendq, idle and udp_timeout are evictions.",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_chat_flood_dropped_total`.
pub static FLOOD_DROPPED: Family = Family {
    name: "switchboard_chat_flood_dropped",
    help: "Lines dropped by flood control (--rate, --burst).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_chat_cluster_link`.
pub static CLUSTER_LINK: Family = Family {
    name: "switchboard_chat_cluster_link",
    help: "1 while the cluster's Redis is reachable (chat --cluster), else 0.",
    kind: Kind::Gauge,
    seconds: false,
};

/// `switchboard_chat_cluster_messages_total{direction}`.
pub static CLUSTER_MESSAGES: Family = Family {
    name: "switchboard_chat_cluster_messages",
    help: "Lines sent to other cluster nodes (out: room lines and /msg) and taken from them (in).",
    kind: Kind::Counter,
    seconds: false,
};

/// `switchboard_chat_cluster_dropped_total{reason}`.
pub static CLUSTER_DROPPED: Family = Family {
    name: "switchboard_chat_cluster_dropped",
    help: "Cluster lines dropped: queue_full (to Redis), link_down, invalid (from Redis), inbound_full (the broker's mailbox).",
    kind: Kind::Counter,
    seconds: false,
};

/// The `reason` label of each [`LeaveReason`], in [`ChatMetrics::departures`]' order.
pub const DEPARTURE_REASONS: [&str; 8] = [
    "closed",
    "reset",
    "quit",
    "shutdown",
    "sendq",
    "idle",
    "udp_timeout",
    "node_lost",
];

/// Where a departure is counted in [`ChatMetrics::departures`].
fn departure_index(reason: &LeaveReason) -> usize {
    match reason {
        LeaveReason::Closed => 0,
        LeaveReason::Reset => 1,
        LeaveReason::Quit(_) => 2,
        LeaveReason::ShuttingDown => 3,
        LeaveReason::SendQueue => 4,
        LeaveReason::Idle => 5,
        LeaveReason::UdpTimeout => 6,
        LeaveReason::NodeLost => 7,
    }
}

/// One chat service's counters.
#[derive(Debug, Default)]
pub struct ChatMetrics {
    /// Users joined now: TCP, UDP.
    pub users: [Gauge; 2],
    pub rooms: Gauge,
    pub said: Counter,
    pub deliveries: Counter,
    /// By [`DEPARTURE_REASONS`].
    pub departures: [Counter; 8],
    pub flood_dropped: Counter,
    /// Whether this chat is a cluster node (the cluster series are shown only then).
    pub clustered: std::sync::atomic::AtomicBool,
    /// Cluster: 1 while linked.
    pub cluster_link: Gauge,
    /// Cluster: lines sent to other nodes, and taken from them.
    pub cluster_out: Counter,
    pub cluster_in: Counter,
    /// Cluster: by [`super::cluster::DROP_REASONS`].
    pub cluster_dropped: [Counter; 4],
}

impl ChatMetrics {
    /// Counts a user leaving.
    pub fn departed(&self, reason: &LeaveReason) {
        self.departures[departure_index(reason)].inc();
    }
}

impl RoleMetrics for ChatMetrics {
    fn collect(&self, out: &mut dyn Collect) {
        for (transport, users) in ["tcp", "udp"].into_iter().zip(&self.users) {
            out.series(
                &USERS,
                &[("transport", transport)],
                Value::Gauge(users.get()),
            );
        }
        out.series(&ROOMS, &[], Value::Gauge(self.rooms.get()));
        out.series(&SAID, &[], Value::Counter(self.said.get()));
        out.series(&DELIVERIES, &[], Value::Counter(self.deliveries.get()));
        for (reason, n) in DEPARTURE_REASONS.into_iter().zip(&self.departures) {
            out.series(&DEPARTURES, &[("reason", reason)], Value::Counter(n.get()));
        }
        out.series(
            &FLOOD_DROPPED,
            &[],
            Value::Counter(self.flood_dropped.get()),
        );
        if !self.clustered.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        out.series(&CLUSTER_LINK, &[], Value::Gauge(self.cluster_link.get()));
        for (direction, n) in [("out", &self.cluster_out), ("in", &self.cluster_in)] {
            out.series(
                &CLUSTER_MESSAGES,
                &[("direction", direction)],
                Value::Counter(n.get()),
            );
        }
        let reasons = super::cluster::DROP_REASONS;
        for (reason, n) in reasons.into_iter().zip(&self.cluster_dropped) {
            out.series(
                &CLUSTER_DROPPED,
                &[("reason", reason)],
                Value::Counter(n.get()),
            );
        }
    }
}
