//! NIC selection: `ZCCL_SOCKET_IFNAME`, with NCCL's `NCCL_SOCKET_IFNAME` syntax.
//!
//! * `eth` — interfaces whose name starts with `eth`;
//! * `=eth0,eth1` — exactly these names;
//! * `^docker,lo` — every interface except those starting with `docker` or `lo`;
//! * `^=docker0` — every interface except exactly `docker0`.
//!
//! Without a specification the default is NCCL's: every usable interface
//! except `docker*` and `lo*`, falling back to `lo` when nothing else exists.
//! An include list entry that matches no interface is an error naming the
//! interfaces that do exist (NVIDIA/nccl#1837 crashed instead).
//!
//! [`IfnameSpec::parse`], [`IfnameSpec::matches`] and [`select`] are pure;
//! [`list_interfaces`] is the only function that asks the system.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// A parsed `ZCCL_SOCKET_IFNAME` value.
///
/// ```
/// use zccl_transports::ifname::IfnameSpec;
/// let spec = IfnameSpec::parse("^docker,lo").unwrap();
/// assert!(spec.matches("eth0"));
/// assert!(!spec.matches("docker0"));
/// assert!(!IfnameSpec::parse("=eth0").unwrap().matches("eth01"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfnameSpec {
    /// `^`: the entries are excluded rather than included.
    pub exclude: bool,
    /// `=`: entries match whole names rather than prefixes.
    pub exact: bool,
    /// The names or prefixes.
    pub entries: Vec<String>,
}

/// A usable network interface: a name and the address sockets bind to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Interface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// The address used as source address (IPv4 preferred).
    pub addr: IpAddr,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// Errors of NIC selection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IfnameError {
    /// The specification is syntactically empty.
    #[error("ZCCL_SOCKET_IFNAME={} names no interface", shown(.spec))]
    Empty {
        /// The raw value.
        spec: String,
    },
    /// An included name matches no usable interface.
    #[error("ZCCL_SOCKET_IFNAME={}: no usable interface matches {}; interfaces that exist: {}", shown(.spec), shown(.entry), list(.available))]
    NotFound {
        /// The raw value.
        spec: String,
        /// The entry that matched nothing.
        entry: String,
        /// Usable interfaces on this host.
        available: Vec<Interface>,
    },
    /// The specification leaves no interface.
    #[error("ZCCL_SOCKET_IFNAME={} selects no usable interface; interfaces that exist: {}", shown(.spec), list(.available))]
    NoneSelected {
        /// The raw value (empty for the default).
        spec: String,
        /// Usable interfaces on this host.
        available: Vec<Interface>,
    },
    /// The system interface list could not be read.
    #[error("cannot list network interfaces: {0}")]
    System(String),
}

/// `v` quoted, cut after 64 characters (a value may be megabytes long).
fn shown(v: &str) -> String {
    match v.char_indices().nth(64) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &v[..cut], v.len()),
    }
}

fn list(v: &[Interface]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl IfnameSpec {
    /// Parses NCCL's syntax.
    pub fn parse(spec: &str) -> Result<Self, IfnameError> {
        let mut s = spec.trim();
        let exclude = s.starts_with('^');
        if exclude {
            s = &s[1..];
        }
        let exact = s.starts_with('=');
        if exact {
            s = &s[1..];
        }
        let entries: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        if entries.is_empty() {
            return Err(IfnameError::Empty { spec: spec.into() });
        }
        Ok(Self {
            exclude,
            exact,
            entries,
        })
    }

    fn entry_matches(&self, entry: &str, name: &str) -> bool {
        if self.exact {
            name == entry
        } else {
            name.starts_with(entry)
        }
    }

    /// Whether interface `name` is selected by this specification.
    pub fn matches(&self, name: &str) -> bool {
        let hit = self.entries.iter().any(|e| self.entry_matches(e, name));
        hit != self.exclude
    }
}

/// Chooses interfaces among `available` (system order is kept).
///
/// `spec` is the raw `ZCCL_SOCKET_IFNAME` value, `None` for the default.
///
/// ```
/// use zccl_transports::ifname::{select, Interface, IfnameError};
/// let nics = vec![
///     Interface { name: "lo".into(), addr: "127.0.0.1".parse().unwrap() },
///     Interface { name: "eth0".into(), addr: "10.0.0.2".parse().unwrap() },
/// ];
/// assert_eq!(select(None, &nics).unwrap()[0].name, "eth0");
/// let err = select(Some("nosuch0"), &nics).unwrap_err();
/// assert!(err.to_string().contains("eth0 (10.0.0.2)"));
/// ```
pub fn select(spec: Option<&str>, available: &[Interface]) -> Result<Vec<Interface>, IfnameError> {
    let Some(raw) = spec.filter(|s| !s.trim().is_empty()) else {
        let default = IfnameSpec {
            exclude: true,
            exact: false,
            entries: vec!["docker".into(), "lo".into()],
        };
        let chosen: Vec<Interface> = available
            .iter()
            .filter(|i| default.matches(&i.name))
            .cloned()
            .collect();
        if !chosen.is_empty() {
            return Ok(chosen);
        }
        let lo: Vec<Interface> = available
            .iter()
            .filter(|i| i.name.starts_with("lo"))
            .cloned()
            .collect();
        if lo.is_empty() {
            return Err(IfnameError::NoneSelected {
                spec: String::new(),
                available: available.to_vec(),
            });
        }
        return Ok(lo);
    };
    let parsed = IfnameSpec::parse(raw)?;
    if !parsed.exclude {
        for entry in &parsed.entries {
            if !available
                .iter()
                .any(|i| parsed.entry_matches(entry, &i.name))
            {
                return Err(IfnameError::NotFound {
                    spec: raw.into(),
                    entry: entry.clone(),
                    available: available.to_vec(),
                });
            }
        }
    }
    let chosen: Vec<Interface> = available
        .iter()
        .filter(|i| parsed.matches(&i.name))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(IfnameError::NoneSelected {
            spec: raw.into(),
            available: available.to_vec(),
        });
    }
    Ok(chosen)
}

/// Lists the usable interfaces of this host: up, with an IPv4 address or a
/// non-link-local IPv6 address (IPv4 preferred; one address per interface).
pub fn list_interfaces() -> Result<Vec<Interface>, IfnameError> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfnameError::System(e.to_string()))?;
    let mut out: Vec<Interface> = Vec::new();
    for a in addrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(sa) = a.address else { continue };
        let ip: IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue; // link-local needs a scope id; not supported
            }
            IpAddr::V6(ip)
        } else {
            continue;
        };
        match out.iter_mut().find(|i| i.name == a.interface_name) {
            Some(existing) => {
                if existing.addr.is_ipv6() && ip.is_ipv4() {
                    existing.addr = ip;
                }
            }
            None => out.push(Interface {
                name: a.interface_name.clone(),
                addr: ip,
            }),
        }
    }
    Ok(out)
}

/// Link state and IPv4 prefix of the named interfaces, as the router's link
/// watch reads them: `(up, prefix)` where `up` means administratively up
/// with carrier (`IFF_UP` and `IFF_RUNNING`). Interfaces that do not exist
/// (any more) are reported down.
///
/// ```
/// let st = zccl_transports::ifname::link_states(&["lo".to_string(), "nosuch0".to_string()]).unwrap();
/// assert!(!st[1].0); // no such interface: down
/// ```
pub fn link_states(names: &[String]) -> Result<Vec<(bool, Option<u8>)>, IfnameError> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| IfnameError::System(e.to_string()))?;
    let mut out = vec![(false, None); names.len()];
    for a in addrs {
        let Some(i) = names.iter().position(|n| *n == a.interface_name) else {
            continue;
        };
        let up = a
            .flags
            .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING);
        out[i].0 |= up;
        if let Some(mask) = a.netmask.as_ref().and_then(|m| m.as_sockaddr_in()) {
            out[i].1 = Some(u32::from(mask.ip()).count_ones() as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nics(names: &[&str]) -> Vec<Interface> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Interface {
                name: (*n).into(),
                addr: format!("10.0.0.{}", i + 1).parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, bool, bool, &[&str])] = &[
            ("eth", false, false, &["eth"]),
            ("=eth0,eth1", false, true, &["eth0", "eth1"]),
            ("^docker,lo", true, false, &["docker", "lo"]),
            ("^=docker0", true, true, &["docker0"]),
            (" ib , eth ", false, false, &["ib", "eth"]),
            ("eth,,", false, false, &["eth"]),
        ];
        for (raw, exclude, exact, entries) in cases {
            let s = IfnameSpec::parse(raw).unwrap();
            assert_eq!((s.exclude, s.exact), (*exclude, *exact), "{raw}");
            assert_eq!(
                s.entries,
                entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                "{raw}"
            );
        }
        for bad in ["", "^", "=", "^=", ",", " "] {
            assert!(
                matches!(IfnameSpec::parse(bad), Err(IfnameError::Empty { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn select_table() {
        let all = nics(&["lo", "eth0", "eth1", "docker0", "ib0", "eth10"]);
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &["eth0", "eth1", "ib0", "eth10"]),
            (Some("eth"), &["eth0", "eth1", "eth10"]),
            (Some("=eth1"), &["eth1"]),
            (Some("=eth0,ib0"), &["eth0", "ib0"]),
            (Some("^docker,lo"), &["eth0", "eth1", "ib0", "eth10"]),
            (Some("^=eth1"), &["lo", "eth0", "docker0", "ib0", "eth10"]),
            (
                Some("^nosuch"),
                &["lo", "eth0", "eth1", "docker0", "ib0", "eth10"],
            ),
            (Some("lo"), &["lo"]),
        ];
        for (spec, want) in cases {
            let got: Vec<String> = select(*spec, &all)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(got, *want, "{spec:?}");
        }
    }

    #[test]
    fn default_falls_back_to_lo() {
        let only = nics(&["lo", "docker0"]);
        assert_eq!(select(None, &only).unwrap()[0].name, "lo");
        assert!(matches!(
            select(None, &[]),
            Err(IfnameError::NoneSelected { .. })
        ));
    }

    #[test]
    fn missing_interface_lists_existing_ones() {
        let all = nics(&["lo", "eth0"]);
        for spec in ["nosuch0", "=eth", "eth0,nosuch0"] {
            let err = select(Some(spec), &all).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, IfnameError::NotFound { .. }), "{spec}");
            assert!(
                msg.contains("lo (10.0.0.1)") && msg.contains("eth0 (10.0.0.2)"),
                "{msg}"
            );
        }
        let err = select(Some("^eth,lo"), &all).unwrap_err();
        assert!(matches!(err, IfnameError::NoneSelected { .. }));
        assert!(err.to_string().contains("eth0"));
    }

    #[test]
    fn system_list_has_loopback() {
        let nics = list_interfaces().unwrap();
        assert!(
            nics.iter().any(|i| i.name == "lo" && i.addr.is_loopback()),
            "{nics:?}"
        );
    }
}
