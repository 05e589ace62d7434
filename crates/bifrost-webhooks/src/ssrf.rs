//! SSRF guard: which addresses a webhook delivery may connect to.
//!
//! A webhook URL is chosen by whoever registers the endpoint, so without a guard a delivery
//! could be aimed at the server's own loopback, the cloud metadata service (169.254.169.254)
//! or anything else on the private network. The guard works at two points:
//!
//! * **create / patch** ([`AddressPolicy::check_url`]): a host that is a literal IP of a refused
//!   class, or `localhost`, is rejected up front (`422 bifrost:webhook-url-forbidden`). Other
//!   host names are accepted: what they resolve to may change, so they are judged at delivery.
//! * **delivery**: the HTTP client resolves host names through [`VettingResolver`], which vets
//!   every address and answers only the vetted ones. The connector then connects to exactly
//!   those addresses, so there is no window between the check and the connection in which a
//!   DNS answer could change (no DNS rebinding). reqwest does not call the resolver for a
//!   literal-IP host, so the deliverer checks those with [`AddressPolicy::check_literal_host`].
//!
//! The client used for deliveries must not follow redirects and must not use a proxy (a proxy
//! would resolve the name itself, out of the guard's sight): both are its own settings.
//!
//! Refused (unless in an operator's allowed CIDR, `--webhook-allow-cidr`,
//! `BIFROST_WEBHOOK_ALLOW_CIDRS`, `webhooks.allow_cidrs`): loopback, private, link-local,
//! CGNAT, multicast, broadcast, unspecified, reserved, documentation and benchmarking ranges,
//! and the IPv6 forms that embed an IPv4 address of those classes.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An address a webhook may not reach. `Display`: `forbidden address <ip>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("forbidden address {0}")]
pub struct ForbiddenAddress(pub IpAddr);

/// Addresses a webhook may not reach, with the operator's exceptions.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy that refuses the classes listed in the module docs, except addresses in `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses allowed CIDRs: `"10.0.0.0/8"`, `"::1/128"`, or a bare address (`"127.0.0.1"` is
    /// `/32`, `"::1"` is `/128`). Surrounding whitespace is ignored; an empty item is an error.
    /// The error message names the bad item.
    pub fn parse_cidrs<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNet>, String> {
        items
            .iter()
            .map(|item| {
                let raw = item.as_ref();
                let text = raw.trim();
                text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                    format!(
                        "invalid CIDR {raw:?}: expected an address or address/prefix, \
                             such as 10.0.0.0/8, ::1/128 or 127.0.0.1"
                    )
                })
            })
            .collect()
    }

    /// The operator's exceptions.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// `Ok` when `ip` may be connected to: it is in an allowed CIDR, or it is not of a refused
    /// class. An IPv4 address embedded in an IPv6 form (IPv4-mapped `::ffff:a.b.c.d`,
    /// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4
    /// `2002::/16`) is judged as that IPv4 address; an allowed CIDR matches either the literal
    /// address or its embedded IPv4 address.
    pub fn vet(&self, ip: IpAddr) -> Result<(), ForbiddenAddress> {
        let embedded = match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => embedded_ipv4(&v6),
        };
        if self.is_allowed(ip) || embedded.is_some_and(|v4| self.is_allowed(IpAddr::V4(v4))) {
            return Ok(());
        }
        match refusal(ip) {
            Some(_) => Err(ForbiddenAddress(ip)),
            None => Ok(()),
        }
    }

    /// For create and patch of an endpoint: `Err` when the URL's host is a literal IP that
    /// [`vet`](Self::vet) refuses, or is `localhost` or a name under `.localhost`
    /// (case-insensitive, a trailing dot ignored). `localhost` stands for 127.0.0.1 and ::1 and
    /// is refused unless `vet` accepts 127.0.0.1 (the error names 127.0.0.1). Other host names
    /// are `Ok`: they are checked when a delivery resolves them.
    ///
    /// Hosts are read after the `url` crate's normalisation, so `http://2130706433/`,
    /// `http://0x7f.1/` or `http://[::ffff:7f00:1]/` are judged as the addresses they are.
    pub fn check_url(&self, url: &Url) -> Result<(), ForbiddenAddress> {
        match url_host(url) {
            Some(UrlHost::Name(name)) if is_localhost(name) => self.vet(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            _ => self.check_literal_host(url),
        }
    }

    /// For delivery: the [`check_url`](Self::check_url) check of a literal-IP host (reqwest
    /// connects to those without calling the resolver). `Ok` for host names, `localhost`
    /// included: [`VettingResolver`] vets what they resolve to.
    pub fn check_literal_host(&self, url: &Url) -> Result<(), ForbiddenAddress> {
        match url_host(url) {
            Some(UrlHost::Ip(ip)) => self.vet(ip),
            Some(UrlHost::Name(_)) | None => Ok(()),
        }
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// A URL's host: a literal address or a name.
enum UrlHost<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The host of `url`, read from its serialisation (reqwest does not re-export `url::Host`).
/// For `http` and `https` the `url` crate has already normalised an IPv4 host in any notation
/// (`2130706433`, `0x7f.1`, `0177.0.0.1`) to dotted decimal and an IPv6 host to its bracketed
/// canonical form, so parsing `host_str` finds every literal address. A host of another scheme
/// that reads as an address is taken as one too.
fn url_host(url: &Url) -> Option<UrlHost<'_>> {
    let host = url.host_str()?;
    let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    Some(literal.map_or(UrlHost::Name(host), UrlHost::Ip))
}

/// `localhost` or a name under it (RFC 6761), case-insensitive, a trailing dot ignored.
fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let suffix = ".localhost";
    name.eq_ignore_ascii_case("localhost")
        || (name.len() > suffix.len()
            && name.is_char_boundary(name.len() - suffix.len())
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// Why `ip` is refused (ignoring the allow list), or `None` when it may be reached.
fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(&v4),
        IpAddr::V6(v6) => REFUSED_V6
            .iter()
            .find(|(refused, _)| refused(&v6))
            .map(|(_, why)| *why)
            .or_else(|| embedded_ipv4(&v6).and_then(|v4| v4_refusal(&v4))),
    }
}

fn v4_refusal(ip: &Ipv4Addr) -> Option<&'static str> {
    REFUSED_V4.iter().find(|(refused, _)| refused(ip)).map(|(_, why)| *why)
}

/// A refused class: a test on the address and why it is refused.
type Class<A> = (fn(&A) -> bool, &'static str);

/// Refused IPv4 classes: std's methods where stable, explicit prefixes otherwise.
const REFUSED_V4: &[Class<Ipv4Addr>] = &[
    (|ip| v4_in(ip, Ipv4Addr::new(0, 0, 0, 0), 8), "unspecified / \"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::is_private, "private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"),
    (|ip| v4_in(ip, Ipv4Addr::new(100, 64, 0, 0), 10), "shared address space, CGNAT (100.64.0.0/10)"),
    (Ipv4Addr::is_loopback, "loopback (127.0.0.0/8)"),
    (Ipv4Addr::is_link_local, "link-local (169.254.0.0/16)"),
    (|ip| v4_in(ip, Ipv4Addr::new(192, 0, 0, 0), 24), "IETF protocol assignments (192.0.0.0/24)"),
    (|ip| v4_in(ip, Ipv4Addr::new(198, 18, 0, 0), 15), "benchmarking (198.18.0.0/15)"),
    (Ipv4Addr::is_documentation, "documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24)"),
    (Ipv4Addr::is_multicast, "multicast (224.0.0.0/4)"),
    (Ipv4Addr::is_broadcast, "broadcast (255.255.255.255)"),
    (|ip| v4_in(ip, Ipv4Addr::new(240, 0, 0, 0), 4), "reserved (240.0.0.0/4)"),
];

/// Refused IPv6 classes, besides the forms embedding a refused IPv4 address ([`embedded_ipv4`]).
const REFUSED_V6: &[Class<Ipv6Addr>] = &[
    (Ipv6Addr::is_unspecified, "unspecified (::)"),
    (Ipv6Addr::is_loopback, "loopback (::1)"),
    (Ipv6Addr::is_unique_local, "unique local, private (fc00::/7)"),
    (Ipv6Addr::is_unicast_link_local, "link-local (fe80::/10)"),
    (|ip| v6_in(ip, Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), "site-local (fec0::/10)"),
    (Ipv6Addr::is_multicast, "multicast (ff00::/8)"),
    (|ip| v6_in(ip, Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), "documentation (2001:db8::/32)"),
    (|ip| v6_in(ip, Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), "discard-only (100::/64)"),
    // Teredo embeds two IPv4 addresses (the server's, and the client's XOR-obfuscated), so
    // rather than judge either, the whole prefix is refused; Teredo is all but unused.
    (|ip| v6_in(ip, Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), "Teredo (2001::/32)"),
];

/// The IPv4 address an IPv6 address carries, in the forms that lead to it:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (but `::` and `::1`, which are
/// themselves refused), SIIT's IPv4-translated `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96` and
/// the local-use `64:ff9b:1::/48` (the last 32 bits, as a /96 translator prefix inside it
/// places them), and 6to4 `2002::/16` (bits 16..48).
fn embedded_ipv4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    const NAT64: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    const NAT64_LOCAL: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0);
    const SIX_TO_FOUR: Ipv6Addr = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0);
    const TRANSLATED: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0);

    let bits = ip.to_bits();
    let last_32 = Ipv4Addr::from_bits(bits as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if v6_in(ip, Ipv6Addr::UNSPECIFIED, 96) {
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(last_32)
    } else if v6_in(ip, NAT64, 96) || v6_in(ip, NAT64_LOCAL, 48) || v6_in(ip, TRANSLATED, 96) {
        Some(last_32)
    } else if v6_in(ip, SIX_TO_FOUR, 16) {
        Some(Ipv4Addr::from_bits((bits >> 80) as u32))
    } else {
        None
    }
}

/// Whether `ip` is in `net/len` (`0 < len <= 32`).
const fn v4_in(ip: &Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = u32::MAX << (32 - len);
    ip.to_bits() & mask == net.to_bits() & mask
}

/// Whether `ip` is in `net/len` (`0 < len <= 128`).
const fn v6_in(ip: &Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX << (128 - len);
    ip.to_bits() & mask == net.to_bits() & mask
}

/// A reqwest DNS resolver that answers only vetted addresses.
///
/// It resolves with [`tokio::net::lookup_host`] and drops the addresses the policy refuses.
/// When every address is refused it fails with [`ForbiddenAddress`] (the first refused
/// address), which [`forbidden_address`] finds in the request error; when the lookup fails,
/// with that I/O error.
#[derive(Clone, Debug)]
pub struct VettingResolver {
    policy: Arc<AddressPolicy>,
}

impl VettingResolver {
    /// A resolver vetting with `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut first_refused = None;
            let vetted: Vec<SocketAddr> = resolved
                .filter(|addr| match policy.vet(addr.ip()) {
                    Ok(()) => true,
                    Err(refused) => {
                        tracing::debug!(
                            host = %host,
                            address = %refused.0,
                            why = refusal(refused.0).unwrap_or("refused"),
                            "webhook host resolved to a forbidden address; dropped"
                        );
                        first_refused.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            if vetted.is_empty() {
                return Err(match first_refused {
                    Some(refused) => refused.into(),
                    None => std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no addresses found for {host}"),
                    )
                    .into(),
                });
            }
            Ok(Box::new(vetted.into_iter()) as Addrs)
        })
    }
}

/// The refused address when `err`, or an error in its `source()` chain, is a
/// [`ForbiddenAddress`]: how the deliverer tells a refused address from a network error.
pub fn forbidden_address(err: &(dyn StdError + 'static)) -> Option<IpAddr> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(ForbiddenAddress(ip)) = err.downcast_ref::<ForbiddenAddress>() {
            return Some(*ip);
        }
        // `io::Error::source` skips the error it wraps (it returns that error's source), so
        // look inside an I/O error explicitly.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref)
            && let Some(ForbiddenAddress(ip)) = inner.downcast_ref::<ForbiddenAddress>()
        {
            return Some(*ip);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn refused(policy: &AddressPolicy, s: &str) -> bool {
        let addr = ip(s);
        match policy.vet(addr) {
            Ok(()) => false,
            Err(err) => {
                assert_eq!(err, ForbiddenAddress(addr));
                true
            }
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    const PUBLIC: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "93.184.215.14",
        // Just outside refused ranges.
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "192.169.0.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "11.0.0.1",
        "126.255.255.255",
        "128.0.0.1",
        "fbff::1",
        "fe00::1",
        "2001:db9::1",
        "2001:1::1",
        "100::1:0:0:0:1",
        "64:ff9a::8.8.8.8",
        "2003::1",
    ];

    #[test]
    fn refuses_every_ipv4_class() {
        let policy = AddressPolicy::default();
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "0.255.255.255",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "254.1.2.3",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
        ] {
            assert!(refused(&policy, addr), "{addr} should be refused");
            assert!(refusal(ip(addr)).is_some(), "{addr} should have a reason");
        }
    }

    #[test]
    fn refuses_every_ipv6_class() {
        let policy = AddressPolicy::default();
        for addr in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "100::",
            "100::ffff:ffff:ffff:ffff",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(refused(&policy, addr), "{addr} should be refused");
        }
    }

    #[test]
    fn accepts_public_addresses() {
        let policy = AddressPolicy::default();
        for addr in PUBLIC {
            assert_eq!(policy.vet(ip(addr)), Ok(()), "{addr} should be accepted");
            assert_eq!(refusal(ip(addr)), None);
        }
    }

    /// Every IPv6 form that embeds `v4`.
    fn embeddings(v4: Ipv4Addr) -> Vec<IpAddr> {
        let [a, b, c, d] = v4.octets();
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        [
            Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, hi, lo),    // IPv4-mapped
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo),         // IPv4-compatible
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo), // NAT64 well-known prefix
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, hi, lo), // NAT64 local-use prefix
            Ipv6Addr::new(0x64, 0xff9b, 1, 0xabcd, 0, 0, hi, lo),
            Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1), // 6to4
            Ipv6Addr::new(0x2002, hi, lo, 0xffff, 1, 2, 3, 4),
        ]
        .into_iter()
        .map(IpAddr::V6)
        .collect()
    }

    #[test]
    fn judges_embedded_ipv4_as_ipv4() {
        let policy = AddressPolicy::default();
        for v4 in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1)] {
            for v6 in embeddings(v4) {
                assert_eq!(policy.vet(v6), Err(ForbiddenAddress(v6)), "{v6} embeds {v4}");
            }
        }
        for v6 in embeddings(Ipv4Addr::new(8, 8, 8, 8)) {
            assert_eq!(policy.vet(v6), Ok(()), "{v6} embeds 8.8.8.8");
        }
        // The textual forms too.
        for addr in [
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::0.0.0.2",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::192.168.1.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.1.2.3",
        ] {
            assert!(refused(&policy, addr), "{addr} should be refused");
        }
        assert_eq!(policy.vet(ip("::ffff:8.8.8.8")), Ok(()));
        assert_eq!(policy.vet(ip("::ffff:0:8.8.8.8")), Ok(()));
    }

    #[test]
    fn allow_list_makes_exceptions() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(policy.vet(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.vet(ip("127.1.2.3")), Ok(()));
        assert_eq!(policy.vet(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.vet(ip("64:ff9b::127.0.0.1")), Ok(()));
        assert!(refused(&policy, "10.0.0.1"));
        assert!(refused(&policy, "::ffff:10.0.0.1"));
        assert!(refused(&policy, "::1"), "::1 is not in 127.0.0.0/8");
        assert_eq!(policy.vet(ip("8.8.8.8")), Ok(()));

        let policy = AddressPolicy::new(
            AddressPolicy::parse_cidrs(&["10.1.0.0/16", "fd00::/8", "169.254.169.254"]).unwrap(),
        );
        assert_eq!(policy.vet(ip("10.1.2.3")), Ok(()));
        assert!(refused(&policy, "10.2.0.1"));
        assert_eq!(policy.vet(ip("fd00::1")), Ok(()));
        assert!(refused(&policy, "fc00::1"));
        assert_eq!(policy.vet(ip("169.254.169.254")), Ok(()));
        assert!(refused(&policy, "169.254.169.253"));

        // An allow entry for the IPv6 form itself.
        let policy = AddressPolicy::new(vec!["::ffff:0:0/96".parse().unwrap()]);
        assert_eq!(policy.vet(ip("::ffff:10.0.0.1")), Ok(()));
        assert!(refused(&policy, "10.0.0.1"));
    }

    #[test]
    fn parse_cidrs_accepts_cidrs_and_bare_addresses() {
        let nets = AddressPolicy::parse_cidrs(&[
            "10.0.0.0/8",
            " ::1/128 ",
            "127.0.0.1",
            "::1",
            "\t192.168.0.0/16\n",
            "fd00::/8",
        ])
        .unwrap();
        let expected: Vec<IpNet> =
            ["10.0.0.0/8", "::1/128", "127.0.0.1/32", "::1/128", "192.168.0.0/16", "fd00::/8"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        assert_eq!(nets, expected);

        let owned = vec![String::from("172.16.0.0/12")];
        assert_eq!(AddressPolicy::parse_cidrs(&owned).unwrap().len(), 1);
        assert_eq!(AddressPolicy::parse_cidrs::<&str>(&[]).unwrap(), vec![]);

        let policy = AddressPolicy::new(nets.clone());
        assert_eq!(policy.allowed(), nets.as_slice());
        assert!(AddressPolicy::default().allowed().is_empty());
    }

    #[test]
    fn parse_cidrs_names_the_bad_item() {
        for bad in [
            "10.0.0.0/33",
            "::1/129",
            "10.0.0",
            "localhost",
            "10.0.0.0/",
            "/8",
            "",
            "  ",
            "1.2.3.4/8/8",
            "[::1]",
        ] {
            let err = AddressPolicy::parse_cidrs(&["10.0.0.0/8", bad]).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err:?} should name {bad:?}");
        }
    }

    #[test]
    fn check_url_refuses_forbidden_hosts_in_any_encoding() {
        let policy = AddressPolicy::default();
        let loopback = ForbiddenAddress(ip("127.0.0.1"));
        for s in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
            "http://0x7f000001:8080/hook",
            "https://user:pw@127.0.0.1:443/x?y#z",
            "http://localhost/",
            "http://localhost:8080/hook",
            "http://LOCALHOST./",
            "http://LocalHost/",
            "http://a.localhost/",
            "http://A.B.LOCALHOST./",
            "http://%6cocalhost/",
            "http://ｌｏｃａｌｈｏｓｔ/",
        ] {
            assert_eq!(policy.check_url(&url(s)), Err(loopback), "{s}");
        }
        for (s, addr) in [
            ("http://[::1]/", "::1"),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1"),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
            ("http://[0:0:0:0:0:ffff:7f00:0001]/", "::ffff:127.0.0.1"),
            ("http://0/", "0.0.0.0"),
            ("http://0.0.0.0:80/", "0.0.0.0"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
            ("http://0xa9fea9fe/", "169.254.169.254"),
            ("http://10.1/", "10.0.0.1"),
            ("http://[fd00::1]/", "fd00::1"),
            ("http://[64:ff9b::a00:1]/", "64:ff9b::10.0.0.1"),
        ] {
            assert_eq!(policy.check_url(&url(s)), Err(ForbiddenAddress(ip(addr))), "{s}");
        }
        for s in [
            "http://example.com/",
            "https://example.com:8443/hook",
            "http://localhost.example.com/",
            "http://notlocalhost/",
            "http://8.8.8.8/",
            "http://[2606:4700::1111]/",
            "http://134744072/",
        ] {
            assert_eq!(policy.check_url(&url(s)), Ok(()), "{s}");
        }
    }

    #[test]
    fn check_url_respects_the_allow_list() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(policy.check_url(&url("http://localhost:9000/")), Ok(()));
        assert_eq!(policy.check_url(&url("http://2130706433/")), Ok(()));
        assert_eq!(policy.check_url(&url("http://[::ffff:127.0.0.1]/")), Ok(()));
        assert_eq!(policy.check_url(&url("http://10.0.0.1/")), Err(ForbiddenAddress(ip("10.0.0.1"))));
        // localhost stands for 127.0.0.1 too: allowing only ::1 does not allow it.
        let policy = AddressPolicy::new(vec!["::1/128".parse().unwrap()]);
        assert_eq!(policy.check_url(&url("http://localhost/")), Err(ForbiddenAddress(ip("127.0.0.1"))));
        assert_eq!(policy.check_url(&url("http://[::1]/")), Ok(()));
    }

    #[test]
    fn check_literal_host_leaves_names_to_the_resolver() {
        let policy = AddressPolicy::default();
        assert_eq!(policy.check_literal_host(&url("http://localhost/")), Ok(()));
        assert_eq!(policy.check_literal_host(&url("http://a.localhost/")), Ok(()));
        assert_eq!(policy.check_literal_host(&url("http://example.com/")), Ok(()));
        assert_eq!(policy.check_literal_host(&url("http://8.8.8.8/")), Ok(()));
        assert_eq!(
            policy.check_literal_host(&url("http://0x7f.0.0.1/")),
            Err(ForbiddenAddress(ip("127.0.0.1")))
        );
        assert_eq!(
            policy.check_literal_host(&url("http://[::ffff:a00:1]/")),
            Err(ForbiddenAddress(ip("::ffff:10.0.0.1")))
        );
    }

    #[test]
    fn forbidden_address_displays_and_is_found_in_chains() {
        assert_eq!(ForbiddenAddress(ip("127.0.0.1")).to_string(), "forbidden address 127.0.0.1");
        assert_eq!(ForbiddenAddress(ip("::1")).to_string(), "forbidden address ::1");

        let direct = ForbiddenAddress(ip("10.0.0.1"));
        assert_eq!(forbidden_address(&direct), Some(ip("10.0.0.1")));

        let in_io = std::io::Error::other(ForbiddenAddress(ip("::1")));
        assert_eq!(forbidden_address(&in_io), Some(ip("::1")));

        let unrelated = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(forbidden_address(&unrelated), None);
    }

    fn client(policy: AddressPolicy) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(VettingResolver::new(Arc::new(policy))))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_through_a_request() {
        let err = client(AddressPolicy::default()).get("http://localhost:9/").send().await.unwrap_err();
        let refused = forbidden_address(&err).unwrap_or_else(|| panic!("not refused: {err:?}"));
        assert!(refused.is_loopback(), "{refused}");
    }

    #[tokio::test]
    async fn resolver_answers_only_vetted_addresses() {
        let resolve = |policy: AddressPolicy, name: &str| {
            VettingResolver::new(Arc::new(policy)).resolve(name.parse().unwrap())
        };

        let allow = AddressPolicy::parse_cidrs(&["127.0.0.0/8", "::1/128"]).unwrap();
        let addrs: Vec<SocketAddr> = resolve(AddressPolicy::new(allow), "localhost").await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");

        // Only IPv4 loopback allowed: ::1, if resolved, is dropped.
        let allow = AddressPolicy::parse_cidrs(&["127.0.0.0/8"]).unwrap();
        let addrs: Vec<SocketAddr> = resolve(AddressPolicy::new(allow), "localhost").await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip() == ip("127.0.0.1")), "{addrs:?}");

        let Err(err) = resolve(AddressPolicy::default(), "localhost").await else {
            panic!("localhost resolved under an empty policy");
        };
        assert!(forbidden_address(&*err).is_some_and(|ip| ip.is_loopback()), "{err}");
    }
}
