//! Reading rank, world size and the rendezvous point from launcher variables.
//!
//! Recognised launchers, in order: `ZCCL_UNIQUE_ID`/`ZCCL_*` only, torchrun
//! (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`), Slurm (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//! node list) and Open MPI (`OMPI_COMM_WORLD_RANK`, `_SIZE`, `_LOCAL_RANK`,
//! `_LOCAL_SIZE`). `ZCCL_RANK`, `ZCCL_WORLD_SIZE`, `ZCCL_LOCAL_RANK`,
//! `ZCCL_LOCAL_WORLD_SIZE`, `ZCCL_ROOT_ADDR` (`host:port` or `host`),
//! `ZCCL_ROOT_PORT`, `ZCCL_JOB_SECRET` and `ZCCL_UNIQUE_ID` override whatever
//! the launcher set.
//!
//! The root: `ZCCL_UNIQUE_ID` (an application-hosted root), else
//! `ZCCL_ROOT_ADDR`, else torchrun's `MASTER_ADDR` with port `MASTER_PORT + 1`
//! (torch's own store already listens on `MASTER_PORT`), else Slurm's first
//! node-list host with port `29500 + SLURM_JOB_ID mod 1000`; `ZCCL_ROOT_PORT`
//! replaces the port. Rank 0 hosts the root unless `ZCCL_UNIQUE_ID` is set.
//!
//! The secret: from `ZCCL_UNIQUE_ID`, else `ZCCL_JOB_SECRET` (32 hex), else
//! **derived** from the launcher's job id and the root address. A derived
//! secret keeps ranks of different jobs apart, but anyone who can read the
//! job id can compute it: set `ZCCL_JOB_SECRET` where that matters.
//!
//! [`detect`] is pure (it reads through a lookup function) and table-tested.

use zccl_transports::handshake::JobSecret;

use crate::envvars::shown;
use crate::error::{Error, Result};
use crate::unique_id::UniqueId;

/// Which launcher set the variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Only `ZCCL_*` variables.
    Zccl,
    /// torchrun / torch.distributed.
    Torchrun,
    /// Slurm `srun`.
    Slurm,
    /// Open MPI `mpirun`.
    OpenMpi,
}

/// Where the root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// A complete id: the application hosts the root.
    UniqueId(UniqueId),
    /// Host name or address and port; rank 0 hosts the root there.
    HostPort(String, u16),
}

/// What the launcher told this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Which launcher.
    pub launcher: Launcher,
    /// This process's rank.
    pub rank: u32,
    /// Number of ranks.
    pub world_size: u32,
    /// Rank among the ranks of this host, when the launcher says.
    pub local_rank: Option<u32>,
    /// Ranks on this host, when the launcher says.
    pub local_world_size: Option<u32>,
    /// The root.
    pub root: RootSpec,
    /// The job secret.
    pub secret: JobSecret,
    /// Whether the secret was derived from job identifiers rather than random.
    pub secret_is_derived: bool,
}

impl LaunchEnv {
    /// Whether this process must host the bootstrap root.
    pub fn hosts_root(&self) -> bool {
        self.rank == 0 && matches!(self.root, RootSpec::HostPort(..))
    }
}

/// The first host of a Slurm node list (`node[03-05,9],gpu1` → `node03`).
///
/// ```
/// assert_eq!(zccl_runtime::launcher_env::first_host("gpu[007-009,12],cpu1").as_deref(), Some("gpu007"));
/// assert_eq!(zccl_runtime::launcher_env::first_host("a1,b2").as_deref(), Some("a1"));
/// ```
pub fn first_host(nodelist: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = nodelist.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                let group: String = chars.by_ref().take_while(|&c| c != ']').collect();
                out.push_str(group.split(',').next()?.split('-').next()?);
            }
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn fnv1a(seed: u64, parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn derive_secret(parts: &[&str]) -> JobSecret {
    let a = fnv1a(0x7a63_636c, parts).to_le_bytes();
    let b = fnv1a(0x5345_4352_4554, parts).to_le_bytes();
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&a);
    s[8..].copy_from_slice(&b);
    JobSecret::from_bytes(s)
}

/// A whole number from variable `name` (value `v`), in `min..=max`.
fn num_in<T: TryFrom<u64>>(name: &str, v: &str, min: u64, max: u64) -> Result<T> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|&n| (min..=max).contains(&n))
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            Error::Env(format!(
                "{name}={}: must be a whole number in {min}..={max}",
                shown(v)
            ))
        })
}

/// [`num_in`] from 0.
fn num<T: TryFrom<u64>>(name: &str, v: &str, max: u64) -> Result<T> {
    num_in(name, v, 0, max)
}

/// [`num`] of an optional `(variable, value)`.
fn num_of<T: TryFrom<u64>>(nv: &Option<(&str, String)>, max: u64) -> Result<Option<T>> {
    nv.as_ref().map(|(n, v)| num(n, v, max)).transpose()
}

/// A root host read from `name`: a host name or an IP address, nothing that
/// cannot be one (empty, blanks, control characters, `/`).
fn check_host(name: &str, whole: &str, host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:%".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Env(format!(
            "{name}={}: {} is not a host name or IP address",
            shown(whole),
            shown(host)
        )))
    }
}

/// [`detect`] on the process environment. A variable that is read and set
/// to bytes that are not UTF-8 is an error naming it.
pub fn detect_from_env() -> Result<LaunchEnv> {
    match crate::envvars::read_process_env(|get| detect(get)) {
        (_, Some(k)) => Err(Error::Env(format!("{k} is not valid UTF-8"))),
        (r, None) => r,
    }
}

/// Reads the launcher variables through `get`.
pub fn detect(get: &dyn Fn(&str) -> Option<String>) -> Result<LaunchEnv> {
    let has = |k: &str| get(k).is_some();
    let launcher = if has("RANK") && has("WORLD_SIZE") {
        Launcher::Torchrun
    } else if has("SLURM_PROCID") {
        Launcher::Slurm
    } else if has("OMPI_COMM_WORLD_RANK") {
        Launcher::OpenMpi
    } else {
        Launcher::Zccl
    };
    let (rank_var, size_var, lrank_var, lsize_var) = match launcher {
        Launcher::Torchrun => ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
        Launcher::Slurm => ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ""),
        Launcher::OpenMpi => (
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
        ),
        Launcher::Zccl => ("", "", "", ""),
    };
    // The value and the name of the variable it came from.
    let pick = |zccl: &'static str, launcher_var: &'static str| {
        get(zccl).map(|v| (zccl, v)).or_else(|| {
            (!launcher_var.is_empty())
                .then(|| get(launcher_var).map(|v| (launcher_var, v)))
                .flatten()
        })
    };
    let u32_max = u64::from(u32::MAX);
    let rank_v = pick("ZCCL_RANK", rank_var);
    let size_v = pick("ZCCL_WORLD_SIZE", size_var);
    let rank: u32 = num_of(&rank_v, u32_max)?.ok_or_else(|| {
        Error::Env("no rank found: set ZCCL_RANK or launch with torchrun, srun or mpirun".into())
    })?;
    let world_size: u32 = num_of(&size_v, u32_max)?
        .ok_or_else(|| Error::Env("no world size found: set ZCCL_WORLD_SIZE".into()))?;
    if world_size == 0 || rank >= world_size {
        let name = |nv: &Option<(&'static str, String)>| nv.as_ref().map_or("", |x| x.0);
        return Err(Error::Env(format!(
            "rank {rank} ({}) is not in a world of {world_size} ({})",
            name(&rank_v),
            name(&size_v)
        )));
    }
    let lrank_v = pick("ZCCL_LOCAL_RANK", lrank_var);
    let lsize_v = pick("ZCCL_LOCAL_WORLD_SIZE", lsize_var);
    let local_rank: Option<u32> = num_of(&lrank_v, u32_max)?;
    let local_world_size: Option<u32> = num_of(&lsize_v, u32_max)?;
    if let (Some(l), Some((name, v))) = (local_world_size, &lsize_v)
        && (l == 0 || l > world_size)
    {
        return Err(Error::Env(format!(
            "{name}={}: must be in 1..={world_size} (the world size)",
            shown(v)
        )));
    }
    if let (Some(l), Some((name, v))) = (local_rank, &lrank_v) {
        let bound = local_world_size.unwrap_or(world_size);
        if l >= bound {
            return Err(Error::Env(format!(
                "{name}={}: must be below {bound} (the local world size, else the world size)",
                shown(v)
            )));
        }
    }

    let port_max = u64::from(u16::MAX);
    // Port 0 would make rank 0 listen on a port no rank knows.
    let port_override: Option<u16> = get("ZCCL_ROOT_PORT")
        .map(|v| num_in("ZCCL_ROOT_PORT", &v, 1, port_max))
        .transpose()?;
    let job_id: String = match launcher {
        Launcher::Torchrun => get("TORCHELASTIC_RUN_ID").unwrap_or_default(),
        Launcher::Slurm => format!(
            "{}.{}",
            get("SLURM_JOB_ID").unwrap_or_default(),
            get("SLURM_STEP_ID").unwrap_or_default()
        ),
        Launcher::OpenMpi => get("OMPI_MCA_ess_base_jobid")
            .or_else(|| get("PMIX_NAMESPACE"))
            .unwrap_or_default(),
        Launcher::Zccl => String::new(),
    };

    let (root, id_secret) = if let Some(id) = get("ZCCL_UNIQUE_ID") {
        // The id holds the secret: not repeated in the message.
        let id: UniqueId = id.parse().map_err(|_| {
            Error::Env(format!(
                "ZCCL_UNIQUE_ID ({} bytes) is malformed: expected zccl1-<32 hex>@<ip:port>",
                id.len()
            ))
        })?;
        (RootSpec::UniqueId(id), Some(id.secret()))
    } else if let Some(addr) = get("ZCCL_ROOT_ADDR") {
        let (host, port) = match addr
            .rsplit_once(':')
            .filter(|(h, _)| !h.is_empty() && !h.ends_with(':'))
        {
            Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), Some(p)),
            None => (addr.clone(), None),
        };
        check_host("ZCCL_ROOT_ADDR", &addr, &host)?;
        let port: Option<u16> = match port {
            Some(p) => Some(num_in("ZCCL_ROOT_ADDR port", p, 1, port_max).map_err(|_| {
                Error::Env(format!(
                    "ZCCL_ROOT_ADDR={}: the port must be a whole number in 1..=65535",
                    shown(&addr)
                ))
            })?),
            None => None,
        };
        let port = port_override.or(port).ok_or_else(|| {
            Error::Env(format!(
                "ZCCL_ROOT_ADDR={} has no port; set ZCCL_ROOT_PORT",
                shown(&addr)
            ))
        })?;
        (RootSpec::HostPort(host, port), None)
    } else {
        match launcher {
            Launcher::Torchrun => {
                let host = get("MASTER_ADDR")
                    .ok_or_else(|| Error::Env("torchrun: MASTER_ADDR is not set".into()))?;
                check_host("MASTER_ADDR", &host, &host)?;
                let mp: u16 = get("MASTER_PORT")
                    .map(|v| num("MASTER_PORT", &v, port_max))
                    .transpose()?
                    .ok_or_else(|| Error::Env("torchrun: MASTER_PORT is not set".into()))?;
                let port = match port_override {
                    Some(p) => p,
                    None => mp.checked_add(1).ok_or_else(|| {
                        Error::Env("MASTER_PORT 65535 leaves no port; set ZCCL_ROOT_PORT".into())
                    })?,
                };
                (RootSpec::HostPort(host, port), None)
            }
            Launcher::Slurm => {
                let list = get("SLURM_STEP_NODELIST")
                    .or_else(|| get("SLURM_JOB_NODELIST"))
                    .or_else(|| get("SLURM_NODELIST"))
                    .ok_or_else(|| Error::Env("Slurm: no node list; set ZCCL_ROOT_ADDR".into()))?;
                let host = first_host(&list).ok_or_else(|| {
                    Error::Env(format!("Slurm: cannot parse node list {}", shown(&list)))
                })?;
                check_host("the Slurm node list", &list, &host)?;
                let job: u64 = get("SLURM_JOB_ID")
                    .map(|v| num("SLURM_JOB_ID", &v, u64::MAX))
                    .transpose()?
                    .unwrap_or(0);
                (
                    RootSpec::HostPort(host, port_override.unwrap_or(29500 + (job % 1000) as u16)),
                    None,
                )
            }
            Launcher::OpenMpi | Launcher::Zccl => {
                return Err(Error::Env(
                    "no rendezvous point: set ZCCL_ROOT_ADDR=host:port or ZCCL_UNIQUE_ID".into(),
                ));
            }
        }
    };
    let (secret, secret_is_derived) = match (id_secret, get("ZCCL_JOB_SECRET")) {
        (Some(s), _) => (s, false),
        (None, Some(hex)) => (
            Some(hex.trim())
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                .and_then(JobSecret::from_hex)
                .ok_or_else(|| Error::Env("ZCCL_JOB_SECRET must be 32 hex characters".into()))?,
            false,
        ),
        (None, None) => {
            let root_text = match &root {
                RootSpec::HostPort(h, p) => format!("{h}:{p}"),
                RootSpec::UniqueId(id) => id.root().to_string(),
            };
            (
                derive_secret(&[
                    &format!("{launcher:?}"),
                    &job_id,
                    &root_text,
                    &world_size.to_string(),
                ]),
                true,
            )
        }
    };
    Ok(LaunchEnv {
        launcher,
        rank,
        world_size,
        local_rank,
        local_world_size,
        root,
        secret,
        secret_is_derived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<LaunchEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(&|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abc"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Torchrun);
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 8, Some(1), Some(2))
        );
        assert_eq!(e.root, RootSpec::HostPort("10.0.0.1".into(), 29501));
        assert!(e.secret_is_derived && !e.hosts_root());
        let other_job = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abd"),
        ])
        .unwrap();
        assert_ne!(e.secret, other_job.secret);
    }

    #[test]
    fn slurm() {
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "gpu[12-13]"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::Slurm);
        assert_eq!(e.root, RootSpec::HostPort("gpu12".into(), 29956));
        assert!(e.hosts_root());
        let e = env(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
            ("ZCCL_ROOT_ADDR", "head:4000"),
        ])
        .unwrap();
        assert_eq!(e.root, RootSpec::HostPort("head".into(), 4000));
    }

    #[test]
    fn open_mpi_and_overrides() {
        let base = [
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ];
        assert!(matches!(env(&base), Err(Error::Env(_))));
        let secret = "ab".repeat(16);
        let mut v = base.to_vec();
        v.push(("ZCCL_ROOT_ADDR", "[::1]:5000"));
        v.push(("ZCCL_RANK", "1"));
        v.push(("ZCCL_JOB_SECRET", &secret));
        let e = env(&v).unwrap();
        assert_eq!(e.launcher, Launcher::OpenMpi);
        assert_eq!((e.rank, e.world_size, e.local_rank), (1, 4, Some(0)));
        assert_eq!(e.root, RootSpec::HostPort("::1".into(), 5000));
        assert_eq!(e.secret, JobSecret::from_bytes([0xab; 16]));
        assert!(!e.secret_is_derived);
    }

    #[test]
    fn unique_id_and_errors() {
        let id = UniqueId::new(
            "127.0.0.1:7".parse().unwrap(),
            JobSecret::from_bytes([5; 16]),
        );
        let e = env(&[
            ("ZCCL_RANK", "0"),
            ("ZCCL_WORLD_SIZE", "2"),
            ("ZCCL_UNIQUE_ID", &id.to_string()),
        ])
        .unwrap();
        assert_eq!(e.root, RootSpec::UniqueId(id));
        assert_eq!(e.secret, id.secret());
        assert!(!e.hosts_root());
        for bad in [
            vec![],
            vec![
                ("ZCCL_RANK", "2"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
            ],
            vec![
                ("ZCCL_RANK", "x"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_JOB_SECRET", "12"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_JOB_SECRET", &"+a".repeat(16)),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:0"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_ROOT_PORT", "0"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "/nonexistent/dir/file:1"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_LOCAL_RANK", "2"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_LOCAL_RANK", "1"),
                ("ZCCL_LOCAL_WORLD_SIZE", "1"),
            ],
            vec![
                ("ZCCL_RANK", "0"),
                ("ZCCL_WORLD_SIZE", "2"),
                ("ZCCL_ROOT_ADDR", "h:1"),
                ("ZCCL_LOCAL_WORLD_SIZE", "0"),
            ],
        ] {
            assert!(matches!(env(&bad), Err(Error::Env(_))), "{bad:?}");
        }
    }

    #[test]
    fn node_lists() {
        assert_eq!(first_host("n1").as_deref(), Some("n1"));
        assert_eq!(first_host("rack[1-2]-n[3-4]").as_deref(), Some("rack1-n3"));
        assert_eq!(first_host("").as_deref(), None);
    }
}
