//! [`UniqueId`]: what an application passes to every rank (like `ncclUniqueId`):
//! the bootstrap root's address and the job's random secret.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use zccl_transports::handshake::JobSecret;

use crate::error::{Error, Result};

/// The rendezvous identity of one job.
///
/// Its text form is `zccl1-<32 hex secret>@<root address>`; it is what
/// [`crate::BootstrapRoot::unique_id`] returns and what `ZCCL_UNIQUE_ID` holds.
///
/// ```
/// use zccl_runtime::UniqueId;
/// use zccl_transports::handshake::JobSecret;
/// let id = UniqueId::new("127.0.0.1:29500".parse().unwrap(), JobSecret::from_bytes([9; 16]));
/// let text = id.to_string();
/// assert!(text.starts_with("zccl1-0909"));
/// assert_eq!(text.parse::<UniqueId>().unwrap(), id);
/// assert_eq!(UniqueId::from_bytes(&id.to_bytes()).unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId {
    root: SocketAddr,
    secret: JobSecret,
}

const PREFIX: &str = "zccl1-";

impl UniqueId {
    /// An id for a root at `root` with `secret`.
    pub fn new(root: SocketAddr, secret: JobSecret) -> Self {
        Self { root, secret }
    }

    /// A fresh random secret from the operating system.
    pub fn random_secret() -> Result<JobSecret> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)
            .map_err(|e| Error::Bootstrap(format!("no randomness for the job secret: {e}")))?;
        Ok(JobSecret::from_bytes(b))
    }

    /// The root's address.
    pub fn root(&self) -> SocketAddr {
        self.root
    }

    /// The job secret.
    pub fn secret(&self) -> JobSecret {
        self.secret
    }

    /// Serialises to bytes (the UTF-8 text form).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses what [`UniqueId::to_bytes`] produced.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        std::str::from_utf8(b)
            .map_err(|_| Error::InvalidArgument("unique id is not UTF-8".into()))?
            .parse()
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}@{}", self.secret.to_hex(), self.root)
    }
}

impl fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UniqueId(root {}, secret ..)", self.root)
    }
}

impl FromStr for UniqueId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "malformed unique id {s:?} (expected zccl1-<32 hex>@<ip:port>)"
            ))
        };
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (hex, addr) = rest.split_once('@').ok_or_else(bad)?;
        let secret = JobSecret::from_hex(hex).ok_or_else(bad)?;
        let root = addr.parse().map_err(|_| bad())?;
        Ok(Self { root, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors() {
        for bad in [
            "",
            "zccl1-",
            "zccl2-00@1.2.3.4:5",
            "zccl1-xyz@1.2.3.4:5",
            &format!("zccl1-{}@nohost", "0".repeat(32)),
        ] {
            assert!(bad.parse::<UniqueId>().is_err(), "{bad}");
        }
        let v6: UniqueId = format!("zccl1-{}@[::1]:80", "a".repeat(32))
            .parse()
            .unwrap();
        assert_eq!(v6.root().port(), 80);
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(
            UniqueId::random_secret().unwrap(),
            UniqueId::random_secret().unwrap()
        );
    }
}
