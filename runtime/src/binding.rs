//! Where the single-host launchers bind their ranks. `zccl bench -N`
//! binds by default as `mpirun` does (`auto`): with 2 ranks or fewer, rank
//! `r` to the `r`-th core; with more, rank `r` to the CPUs of package
//! (socket) `r mod packages`, which on a one-package host is no binding;
//! with more ranks than cores, none (an oversubscribed host, where each rank
//! had better run wherever a CPU is free). `zccl run`, which plays
//! torchrun's part for trainers (whose ranks run threads of their own),
//! binds nothing unless asked (`--bind-to auto|core`).
//!
//! Why: ranks that wait poll (a rank's receive spins on shared memory), and
//! the kernel sometimes leaves two polling ranks on one CPU while another
//! idles: a trace of 2 unbound ranks in a 128 KiB sendrecv showed both
//! ranks' threads switching on one vCPU of 2. Bound ranks cannot end up
//! there, and benchmarks compare like with like (`mpirun` binds its 2-rank
//! runs the same way).
//!
//! A core is what `/sys/devices/system/cpu/cpuN/topology` says
//! (`physical_package_id`, `core_id`): a rank bound to a core may use all
//! its hardware threads. Only the CPUs the launcher itself may use count
//! (its affinity mask: `taskset`, a cpuset, a Slurm allocation). The
//! decisions ([`BindTo::plan`], [`cores`]) are pure; [`host_plan`] reads
//! this host and [`bind_command`] applies a plan to a child process.

use std::fmt;
use std::process::Command;
use std::str::FromStr;

/// The launchers' binding policy (`--bind-to`, `ZCCL_BIND_TO`).
///
/// ```
/// use zccl_runtime::binding::BindTo;
/// assert_eq!("auto".parse::<BindTo>(), Ok(BindTo::Auto));
/// assert_eq!("core".parse::<BindTo>(), Ok(BindTo::Core));
/// assert_eq!("NONE".parse::<BindTo>(), Ok(BindTo::None));
/// assert!("socket".parse::<BindTo>().unwrap_err().contains("auto, core or none"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindTo {
    /// As `mpirun`: a core per rank for 2 ranks or fewer, a package per
    /// rank (round robin) for more, nothing when oversubscribed.
    Auto,
    /// A core per rank, in order, when the cores are enough; else nothing.
    Core,
    /// Ranks keep the launcher's affinity mask.
    None,
}

impl FromStr for BindTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BindTo::Auto),
            "core" => Ok(BindTo::Core),
            "none" => Ok(BindTo::None),
            _ => Err(format!(
                "{} is not a binding: use auto, core or none",
                crate::envvars::shown(s)
            )),
        }
    }
}

impl fmt::Display for BindTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindTo::Auto => "auto",
            BindTo::Core => "core",
            BindTo::None => "none",
        })
    }
}

/// One core: its package (socket) and its CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// `physical_package_id` (0 where unknown).
    pub package: u32,
    /// Its CPUs (hardware threads), ascending.
    pub cpus: Vec<usize>,
}

impl BindTo {
    /// The CPUs of each of `ranks` ranks, given the `cores` the launcher
    /// may use ([`cores`]); `None` leaves every rank unbound. Pure.
    ///
    /// ```
    /// use zccl_runtime::binding::{cores, BindTo};
    /// // Two packages of two cores.
    /// let c = cores(&[0, 1, 2, 3], |cpu| Some(((cpu / 2) as u32, (cpu % 2) as u32)));
    /// assert_eq!(BindTo::Core.plan(2, &c), Some(vec![vec![0], vec![1]]));
    /// assert_eq!(BindTo::Auto.plan(2, &c), Some(vec![vec![0], vec![1]]));
    /// // More than 2 ranks: a package each, round robin.
    /// assert_eq!(BindTo::Auto.plan(3, &c), Some(vec![vec![0, 1], vec![2, 3], vec![0, 1]]));
    /// assert_eq!(BindTo::Core.plan(3, &c), Some(vec![vec![0], vec![1], vec![2]]));
    /// // More ranks than cores: oversubscribed, left to the scheduler.
    /// assert_eq!(BindTo::Auto.plan(5, &c), None);
    /// assert_eq!(BindTo::None.plan(2, &c), None);
    /// ```
    pub fn plan(self, ranks: u32, cores: &[Core]) -> Option<Vec<Vec<usize>>> {
        let n = usize::try_from(ranks).ok()?;
        if n == 0 || n > cores.len() || self == BindTo::None {
            return None;
        }
        if self == BindTo::Core || n <= 2 {
            return Some(cores[..n].iter().map(|c| c.cpus.clone()).collect());
        }
        let mut packages: Vec<(u32, Vec<usize>)> = Vec::new();
        for c in cores {
            match packages.iter_mut().find(|p| p.0 == c.package) {
                Some(p) => p.1.extend(&c.cpus),
                None => packages.push((c.package, c.cpus.clone())),
            }
        }
        if packages.len() < 2 {
            return None; // one package: every rank may use every CPU anyway
        }
        for p in &mut packages {
            p.1.sort_unstable();
        }
        Some(
            (0..n)
                .map(|r| packages[r % packages.len()].1.clone())
                .collect(),
        )
    }
}

/// The cores among `cpus` (the CPUs the launcher may use), in the order of
/// their lowest CPU; `core_of(cpu)` gives a CPU's `(package, core)`,
/// `None` making it a core of its own. Pure.
///
/// ```
/// use zccl_runtime::binding::cores;
/// // Two cores with two hardware threads each (CPU n and n + 2 siblings).
/// let topo = |cpu: usize| Some((0, (cpu % 2) as u32));
/// let c = cores(&[0, 1, 2, 3], topo);
/// assert_eq!(c.iter().map(|c| c.cpus.clone()).collect::<Vec<_>>(), vec![vec![0, 2], vec![1, 3]]);
/// // Only the CPUs the launcher may use count.
/// assert_eq!(cores(&[1, 3], topo).len(), 1);
/// assert_eq!(cores(&[0, 1], |_| None).len(), 2);
/// ```
pub fn cores(cpus: &[usize], core_of: impl Fn(usize) -> Option<(u32, u32)>) -> Vec<Core> {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut keys: Vec<Option<(u32, u32)>> = Vec::new();
    let mut out: Vec<Core> = Vec::new();
    for cpu in sorted {
        let key = core_of(cpu);
        match key.and_then(|k| keys.iter().position(|x| *x == Some(k))) {
            Some(i) => out[i].cpus.push(cpu),
            None => {
                keys.push(key);
                out.push(Core {
                    package: key.map_or(0, |k| k.0),
                    cpus: vec![cpu],
                });
            }
        }
    }
    out
}

/// This host's cores as this process may use them: its affinity mask
/// grouped by sysfs topology ([`cores`]).
///
/// ```
/// assert!(!zccl_runtime::binding::host_cores().is_empty());
/// ```
pub fn host_cores() -> Vec<Core> {
    cores(&allowed_cpus(), sysfs_core)
}

/// The CPUs this process may run on (its affinity mask); empty where it
/// cannot be read.
///
/// ```
/// let cpus = zccl_runtime::binding::allowed_cpus();
/// assert!(!cpus.is_empty());
/// ```
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set, zeroed, of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// `(physical_package_id, core_id)` of `cpu` from sysfs, if readable.
///
/// ```
/// let _ = zccl_runtime::binding::sysfs_core(0);
/// ```
pub fn sysfs_core(cpu: usize) -> Option<(u32, u32)> {
    let read = |f: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("physical_package_id")?, read("core_id")?))
}

/// The plan for `ranks` ranks on this host under `bind` ([`host_cores`],
/// [`BindTo::plan`]).
///
/// ```
/// use zccl_runtime::binding::{host_plan, BindTo};
/// assert_eq!(host_plan(1, BindTo::None), None);
/// if let Some(p) = host_plan(1, BindTo::Core) {
///     assert_eq!(p.len(), 1);
/// }
/// ```
pub fn host_plan(ranks: u32, bind: BindTo) -> Option<Vec<Vec<usize>>> {
    if bind == BindTo::None {
        return None;
    }
    bind.plan(ranks, &host_cores())
}

/// Makes `cmd`'s process run on `cpus` only (set between fork and exec; a
/// CPU set the kernel refuses leaves the process unbound rather than
/// failing the launch). An empty list binds nothing.
///
/// ```
/// let mut cmd = std::process::Command::new("true");
/// zccl_runtime::binding::bind_command(&mut cmd, &[0]);
/// assert!(cmd.status().unwrap().success());
/// ```
pub fn bind_command(cmd: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let cpus: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|&c| c < libc::CPU_SETSIZE as usize)
        .collect();
    if cpus.is_empty() {
        return;
    }
    // SAFETY: the set is built here, before the fork; the child only makes
    // one system call (async-signal-safe) with it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        cmd.pre_exec(move || {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(c: &[Core]) -> Vec<Vec<usize>> {
        c.iter().map(|c| c.cpus.clone()).collect()
    }

    #[test]
    fn plan_binds_in_core_order_or_not_at_all() {
        let four = cores(&[0, 1, 2, 3], |c| Some((0, c as u32)));
        assert_eq!(
            BindTo::Core.plan(3, &four),
            Some(vec![vec![0], vec![1], vec![2]])
        );
        // One package: more than 2 ranks under auto are not restricted.
        assert_eq!(BindTo::Auto.plan(3, &four), None);
        assert_eq!(BindTo::Auto.plan(2, &four), Some(vec![vec![0], vec![1]]));
        assert_eq!(BindTo::Core.plan(5, &four), None);
        assert_eq!(BindTo::Core.plan(0, &four), None);
        assert_eq!(BindTo::Core.plan(1, &[]), None);
    }

    #[test]
    fn cores_group_siblings_across_packages() {
        // Two packages, each core id 0 and 1: four cores.
        let topo = |c: usize| Some(((c / 4) as u32, (c % 2) as u32));
        let c = cores(&[7, 6, 5, 4, 3, 2, 1, 0], topo);
        assert_eq!(
            flat(&c),
            vec![vec![0, 2], vec![1, 3], vec![4, 6], vec![5, 7]]
        );
        assert_eq!(
            c.iter().map(|c| c.package).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        assert_eq!(
            BindTo::Auto.plan(4, &c),
            Some(vec![
                vec![0, 1, 2, 3],
                vec![4, 5, 6, 7],
                vec![0, 1, 2, 3],
                vec![4, 5, 6, 7]
            ])
        );
    }

    #[test]
    fn a_bound_child_runs_on_its_cpu_only() {
        let cpus = allowed_cpus();
        let last = *cpus.last().expect("some CPU");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        bind_command(&mut cmd, &[last]);
        let out = cmd.output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            s.split_whitespace().nth(1),
            Some(last.to_string().as_str()),
            "{s}"
        );
    }
}
