//! Where the single-host launchers (`zccl run`, `zccl bench -N`) bind their
//! ranks: one core each, in order, when there are at least as many cores
//! as ranks, as `mpirun` does by default (`--bind-to core` for small jobs);
//! no binding when the ranks outnumber the cores (an oversubscribed host,
//! where each rank had better run wherever a CPU is free).
//!
//! Why: ranks that wait poll (a rank's receive spins on shared memory), and
//! the kernel sometimes leaves two polling ranks on one CPU while another
//! CPU idles. Measured on the 2-vCPU machine of `docs/performance.md`, 2
//! unbound ranks ran a 128 KiB sendrecv in 11–14 µs in most runs and
//! 58–72 µs in the others: in those, both ranks' threads were switched on
//! one CPU (16 000 context switches per 20 000 iterations against 3 300).
//! Bound ranks cannot end up there.
//!
//! A core is what `/sys/devices/system/cpu/cpuN/topology` says
//! (`physical_package_id`, `core_id`): a rank bound to a core may use all
//! its hardware threads. Only the CPUs the launcher itself may use count
//! (its affinity mask: `taskset`, a cpuset, a Slurm allocation). With
//! `--bind-to none` (or `ZCCL_BIND_TO=none`) ranks inherit the launcher's
//! mask unchanged. The decisions ([`BindTo::plan`], [`cores`]) are pure;
//! [`host_plan`] reads this host and [`bind_command`] applies a plan to a
//! child process.

use std::fmt;
use std::process::Command;
use std::str::FromStr;

/// The launchers' binding policy (`--bind-to`, `ZCCL_BIND_TO`).
///
/// ```
/// use zccl_runtime::binding::BindTo;
/// assert_eq!("core".parse::<BindTo>(), Ok(BindTo::Core));
/// assert_eq!("NONE".parse::<BindTo>(), Ok(BindTo::None));
/// assert!("socket".parse::<BindTo>().unwrap_err().contains("core or none"));
/// assert_eq!(BindTo::default(), BindTo::Core);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindTo {
    /// One core per rank, in order, when the cores are enough; else none.
    #[default]
    Core,
    /// Ranks keep the launcher's affinity mask.
    None,
}

impl FromStr for BindTo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "core" => Ok(BindTo::Core),
            "none" => Ok(BindTo::None),
            _ => Err(format!(
                "{} is not a binding: use core or none",
                crate::envvars::shown(s)
            )),
        }
    }
}

impl fmt::Display for BindTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindTo::Core => "core",
            BindTo::None => "none",
        })
    }
}

impl BindTo {
    /// The CPUs of each of `ranks` ranks, given the `cores` the launcher
    /// may use (each a list of CPUs, [`cores`]); `None` leaves every rank
    /// unbound. Pure.
    ///
    /// ```
    /// use zccl_runtime::binding::BindTo;
    /// let cores = vec![vec![0, 2], vec![1, 3]];
    /// assert_eq!(BindTo::Core.plan(2, &cores), Some(vec![vec![0, 2], vec![1, 3]]));
    /// assert_eq!(BindTo::Core.plan(1, &cores), Some(vec![vec![0, 2]]));
    /// // More ranks than cores: oversubscribed, left to the scheduler.
    /// assert_eq!(BindTo::Core.plan(4, &cores), None);
    /// assert_eq!(BindTo::None.plan(2, &cores), None);
    /// ```
    pub fn plan(self, ranks: u32, cores: &[Vec<usize>]) -> Option<Vec<Vec<usize>>> {
        match self {
            BindTo::None => None,
            BindTo::Core => {
                let n = usize::try_from(ranks).ok()?;
                (n >= 1 && n <= cores.len()).then(|| cores[..n].to_vec())
            }
        }
    }
}

/// The cores among `cpus` (the CPUs the launcher may use), each the list of
/// its CPUs, in the order of their lowest CPU; `core_of(cpu)` gives a CPU's
/// `(package, core)`, `None` making it a core of its own. Pure.
///
/// ```
/// use zccl_runtime::binding::cores;
/// // Two cores with two hardware threads each (CPU n and n + 2 siblings).
/// let topo = |cpu: usize| Some((0, (cpu % 2) as u32));
/// assert_eq!(cores(&[0, 1, 2, 3], topo), vec![vec![0, 2], vec![1, 3]]);
/// // Only the CPUs the launcher may use count.
/// assert_eq!(cores(&[1, 3], topo), vec![vec![1, 3]]);
/// assert_eq!(cores(&[0, 1], |_| None), vec![vec![0], vec![1]]);
/// ```
pub fn cores(cpus: &[usize], core_of: impl Fn(usize) -> Option<(u32, u32)>) -> Vec<Vec<usize>> {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut keys: Vec<Option<(u32, u32)>> = Vec::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for cpu in sorted {
        let key = core_of(cpu);
        match key.and_then(|k| keys.iter().position(|x| *x == Some(k))) {
            Some(i) => out[i].push(cpu),
            None => {
                keys.push(key);
                out.push(vec![cpu]);
            }
        }
    }
    out
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
fn sysfs_core(cpu: usize) -> Option<(u32, u32)> {
    let read = |f: &str| -> Option<u32> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("physical_package_id")?, read("core_id")?))
}

/// The plan for `ranks` ranks on this host under `bind`: this process's
/// CPUs grouped into cores ([`cores`], [`BindTo::plan`]).
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
    bind.plan(ranks, &cores(&allowed_cpus(), sysfs_core))
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

    #[test]
    fn plan_binds_in_core_order_or_not_at_all() {
        let four = cores(&[0, 1, 2, 3], |c| Some((0, c as u32)));
        assert_eq!(
            BindTo::Core.plan(3, &four),
            Some(vec![vec![0], vec![1], vec![2]])
        );
        assert_eq!(BindTo::Core.plan(5, &four), None);
        assert_eq!(BindTo::Core.plan(0, &four), None);
        assert_eq!(BindTo::Core.plan(1, &[]), None);
    }

    #[test]
    fn cores_group_siblings_across_packages() {
        // Two packages, each core id 0 and 1: four cores.
        let topo = |c: usize| Some(((c / 4) as u32, (c % 2) as u32));
        assert_eq!(
            cores(&[7, 6, 5, 4, 3, 2, 1, 0], topo),
            vec![vec![0, 2], vec![1, 3], vec![4, 6], vec![5, 7]]
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
