//! Client addresses behind reverse proxies: trusted proxy ranges, and the
//! address `X-Forwarded-For` names when (and only when) a trusted proxy
//! set it.
use std::net::IpAddr;

use http::HeaderMap;

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length"))?,
            None => max,
        };
        // `::ffff:10.0.0.0/104` is the IPv4 range `10.0.0.0/8`.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses a comma-separated list of ranges.
pub fn parse_ranges(list: &str) -> Result<Vec<Cidr>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is read from its right end, skipping
/// trusted proxies, and the first address that is not one is the client
/// (what nginx's `real_ip_recursive` does). A malformed entry stops the
/// walk at the last trustworthy address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Some(ip) = forwarded_address(hop) else {
            break;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// An address as proxies write it in `X-Forwarded-For`: bare, `ip:port`,
/// or `[v6]` with or without a port.
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The range one actor is counted by: an IPv4 address, or an IPv6 /64
/// (one host usually holds a whole /64).
pub fn actor_range(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(masked.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn ranges_match_what_they_cover() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        // A mapped range is the IPv4 range it maps, never everything.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        let mapped_host: Cidr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(mapped_host.contains("10.0.0.1".parse().unwrap()));
        assert!(!mapped_host.contains("8.8.8.8".parse().unwrap()));
        assert!("proxy.local".parse::<Cidr>().is_err());
        assert_eq!(parse_ranges("10.0.0.0/8, 127.0.0.1").unwrap().len(), 2);
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted = parse_ranges("10.0.0.0/8").unwrap();
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // A client that sends its own header is not believed.
        assert_eq!(
            client_ip(outsider, &headers(&["1.2.3.4"]), &trusted),
            outsider
        );
        // Behind the proxy: the right-most address that is not a proxy.
        assert_eq!(
            client_ip(
                peer,
                &headers(&["1.2.3.4, 198.51.100.7, 10.0.0.9"]),
                &trusted
            ),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &headers(&["1.2.3.4", "198.51.100.7"]), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            client_ip(peer, &headers(&["198.51.100.7:51234"]), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &headers(&["[2001:db8::1]:443"]), &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Garbage ends the walk at the last trustworthy hop.
        assert_eq!(client_ip(peer, &headers(&["junk"]), &trusted), peer);
        assert_eq!(client_ip(peer, &headers(&[]), &trusted), peer);
        assert_eq!(
            actor_range("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
