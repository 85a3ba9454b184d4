//! Access lists (`--allow`, `--deny`): which peers a server accepts, by CIDR block
//! (`10.0.0.0/8`, `::1/128`, or a bare address for exactly that host).

use std::net::IpAddr;

use ipnet::IpNet;

/// Which peers a server accepts: none of `deny`, and one of `allow` when `allow` is given.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Parses a CIDR block or a bare address (a block of one host).
pub fn parse_cidr(text: &str) -> std::result::Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR block or an IP address (try 10.0.0.0/8)"))
}

impl AccessList {
    /// An access list from `--allow` and `--deny` blocks.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        AccessList { allow, deny }
    }

    /// Whether `peer` may connect. IPv4 peers on an IPv6 socket (`::ffff:a.b.c.d`) are
    /// matched as IPv4, so `--allow 127.0.0.0/8` works on a `[::]` listener too.
    pub fn permits(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|net| net.contains(&peer)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists() {
        let list = AccessList::new(
            vec![
                parse_cidr("127.0.0.0/8").unwrap(),
                parse_cidr("::1").unwrap(),
            ],
            vec![parse_cidr("127.0.0.2").unwrap()],
        );
        assert!(list.permits("127.0.0.1".parse().unwrap()));
        assert!(list.permits("::1".parse().unwrap()));
        assert!(list.permits("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!list.permits("127.0.0.2".parse().unwrap()));
        assert!(!list.permits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!list.permits("10.1.2.3".parse().unwrap()));
        assert!(AccessList::default().permits("10.1.2.3".parse().unwrap()));
        let deny_only = AccessList::new(vec![], vec![parse_cidr("10.0.0.0/8").unwrap()]);
        assert!(!deny_only.permits("10.200.0.1".parse().unwrap()));
        assert!(deny_only.permits("192.0.2.1".parse().unwrap()));
        // Host bits in a block are ignored, as in every firewall syntax.
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example").is_err());
    }
}
