//! Which CPUs the shards run on.
//!
//! Default: the CPUs in this process's affinity mask (`sched_getaffinity`, through
//! `core_affinity`) that are online.
//! In a Kubernetes pod with the static CPU manager policy and integer CPU requests, the
//! affinity mask is exactly the exclusive cores the kubelet assigned, so the MC starts one
//! shard per assigned core. `--cpus` and `--shards` override.

use std::collections::BTreeSet;

/// Why the CPU selection failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// No usable CPU at all.
    #[error("no usable CPU found in the process affinity mask")]
    NoCpus,
    /// `--cpus` names CPUs the process may not run on.
    #[error("--cpus: CPU {0} is not in this process's affinity mask or not online")]
    NotAllowed(usize),
    /// `--shards` asks for more shards than CPUs.
    #[error("--shards {shards}: only {cpus} usable CPU(s); at most one shard per CPU")]
    TooManyShards {
        /// Requested shards.
        shards: usize,
        /// Usable CPUs.
        cpus: usize,
    },
}

/// CPUs in the affinity mask of the calling thread (`core_affinity`, which reads it with
/// `sched_getaffinity`). When the mask cannot be read (a seccomp filter that forbids the call,
/// a kernel without it) the online CPUs stand in: [`usable_cpus`] then offers every online
/// CPU, and `--cpus` still narrows it down.
pub fn affinity_cpus() -> BTreeSet<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) => ids.into_iter().map(|c| c.id).collect(),
        None => online_cpus().unwrap_or_default(),
    }
}

/// Online CPUs from `/sys/devices/system/cpu/online` (None when unreadable).
pub fn online_cpus() -> Option<BTreeSet<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    crate::config::parse_cpu_list(text.trim())
        .ok()
        .map(|v| v.into_iter().collect())
}

/// The CPUs this process may use: affinity ∩ online.
pub fn usable_cpus() -> Vec<usize> {
    let aff = affinity_cpus();
    match online_cpus() {
        Some(online) => aff.intersection(&online).copied().collect(),
        None => aff.into_iter().collect(),
    }
}

/// Picks one CPU per shard from `usable`, honouring `--cpus` and `--shards`.
pub fn select(
    usable: &[usize],
    requested_cpus: Option<&[usize]>,
    shards: Option<usize>,
) -> Result<Vec<usize>, CpuError> {
    let pool: Vec<usize> = match requested_cpus {
        Some(req) => {
            for c in req {
                if !usable.contains(c) {
                    return Err(CpuError::NotAllowed(*c));
                }
            }
            req.to_vec()
        }
        None => usable.to_vec(),
    };
    if pool.is_empty() {
        return Err(CpuError::NoCpus);
    }
    match shards {
        None => Ok(pool),
        Some(n) if n <= pool.len() => Ok(pool[..n].to_vec()),
        Some(n) => Err(CpuError::TooManyShards {
            shards: n,
            cpus: pool.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_the_kernel_mask() {
        // /proc/self/status holds the same mask as a list ("Cpus_allowed_list: 0-3,6").
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        let expected: BTreeSet<usize> = crate::config::parse_cpu_list(list)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(affinity_cpus(), expected);
    }

    #[test]
    fn usable_is_not_empty_and_within_affinity() {
        let u = usable_cpus();
        assert!(!u.is_empty());
        let aff = affinity_cpus();
        assert!(u.iter().all(|c| aff.contains(c)));
    }

    #[test]
    fn selection_rules() {
        let usable = [0, 1, 2, 3];
        assert_eq!(select(&usable, None, None).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(select(&usable, None, Some(2)).unwrap(), vec![0, 1]);
        assert_eq!(select(&usable, Some(&[2, 3]), None).unwrap(), vec![2, 3]);
        assert_eq!(select(&usable, Some(&[3]), Some(1)).unwrap(), vec![3]);
        assert!(matches!(
            select(&usable, Some(&[7]), None),
            Err(CpuError::NotAllowed(7))
        ));
        assert!(matches!(
            select(&usable, None, Some(5)),
            Err(CpuError::TooManyShards { shards: 5, cpus: 4 })
        ));
        assert!(matches!(select(&[], None, None), Err(CpuError::NoCpus)));
    }
}
