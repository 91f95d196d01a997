//! CPU limits, as Docker spells them (`--cpus 1.5`: at most one and a half CPUs of time;
//! `--cpu-shares 512`: half the default weight under contention), and what each cgroup
//! version makes of them. Pure: the supervisor writes the files.
//!
//! Cores are kept in thousandths (millicores, Kubernetes' `1500m`) so that records compare
//! exactly and the scheduler adds integers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The smallest limit: a hundredth of a CPU (1 ms of every 100 ms period).
pub const MIN_MILLICORES: u32 = 10;
/// The largest limit: 1024 CPUs.
pub const MAX_MILLICORES: u32 = 1_024_000;
/// The range of `--cpu-shares` (cgroup v1's `cpu.shares`).
pub const MIN_SHARES: u32 = 2;
/// See [`MIN_SHARES`].
pub const MAX_SHARES: u32 = 262_144;
/// The scheduling period a quota is given in (the kernel's and Docker's default), in µs.
pub const PERIOD_US: u64 = 100_000;

/// Why a CPU setting is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CpuError {
    /// Not a number of CPUs.
    #[error("cpu.cores: '{0}' is not a number of CPUs: give a decimal such as 0.5 or 1.5")]
    NotANumber(String),
    /// Out of range.
    #[error("cpu.cores: {0} is not between 0.01 and 1024 (0 means no limit)")]
    CoresOutOfRange(String),
    /// Shares out of range.
    #[error("cpu.shares: {0} is not between {MIN_SHARES} and {MAX_SHARES} (1024 is a container's default weight; 0 means the default)")]
    SharesOutOfRange(u32),
}

/// A container's CPU settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimits {
    /// At most this many thousandths of CPUs of time; `None`: no limit.
    #[serde(default)]
    pub millicores: Option<u32>,
    /// Relative weight under contention; `None`: the default.
    #[serde(default)]
    pub shares: Option<u32>,
}

impl CpuLimits {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.millicores.is_none() && self.shares.is_none()
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), CpuError> {
        if let Some(m) = self.millicores {
            if !(MIN_MILLICORES..=MAX_MILLICORES).contains(&m) {
                return Err(CpuError::CoresOutOfRange(format_cores(m)));
            }
        }
        match self.shares {
            Some(s) if !(MIN_SHARES..=MAX_SHARES).contains(&s) => {
                Err(CpuError::SharesOutOfRange(s))
            }
            _ => Ok(()),
        }
    }

    /// The quota per [`PERIOD_US`], in µs (v1 `cpu.cfs_quota_us`).
    pub fn quota_us(&self) -> Option<u64> {
        self.millicores.map(|m| u64::from(m) * PERIOD_US / 1000)
    }

    /// The line for cgroup v2's `cpu.max`.
    pub fn v2_max(&self) -> String {
        match self.quota_us() {
            Some(q) => format!("{q} {PERIOD_US}"),
            None => format!("max {PERIOD_US}"),
        }
    }

    /// cgroup v2's `cpu.weight` (1..10000) for the shares, as runc (1.3 and later) and crun
    /// convert them: 2 maps to 1, 262144 to 10000, and 1024 (v1's default) to 100 (v2's
    /// default), so `--cpu-shares 1024` is the default weight on both.
    pub fn v2_weight(&self) -> Option<u64> {
        self.shares.map(|shares| match shares {
            0..=2 => 1,
            MAX_SHARES.. => 10_000,
            s => {
                let l = f64::from(s).log2();
                let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
                10f64.powf(exponent).ceil().clamp(1.0, 10_000.0) as u64
            }
        })
    }
}

/// Millicores of a number of cores as the API gives it (`0`: no limit).
pub fn millicores_from_cores(cores: f64) -> Result<Option<u32>, CpuError> {
    if !cores.is_finite() {
        return Err(CpuError::NotANumber(cores.to_string()));
    }
    if cores == 0.0 {
        return Ok(None);
    }
    let millis = (cores * 1000.0).round();
    if !(f64::from(MIN_MILLICORES)..=f64::from(MAX_MILLICORES)).contains(&millis) {
        return Err(CpuError::CoresOutOfRange(cores.to_string()));
    }
    Ok(Some(millis as u32))
}

/// Parses Docker's `--cpus` text (`1.5`, `0.25`, `2`).
pub fn parse_cores(text: &str) -> Result<Option<u32>, CpuError> {
    let cores: f64 = text
        .trim()
        .parse()
        .map_err(|_| CpuError::NotANumber(text.into()))?;
    if !cores.is_finite() {
        return Err(CpuError::NotANumber(text.into()));
    }
    millicores_from_cores(cores)
}

/// Millicores as a decimal number of CPUs: `1500` is `1.5`, `2000` is `2`.
pub fn format_cores(millicores: u32) -> String {
    let whole = millicores / 1000;
    let frac = millicores % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// Cores of millicores, for the API.
pub fn cores_of(millicores: u32) -> f64 {
    f64::from(millicores) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_parse_as_docker_takes_them() {
        assert_eq!(parse_cores("1.5"), Ok(Some(1500)));
        assert_eq!(parse_cores("0.5"), Ok(Some(500)));
        assert_eq!(parse_cores(" 2 "), Ok(Some(2000)));
        assert_eq!(parse_cores("0.01"), Ok(Some(10)));
        assert_eq!(parse_cores("0"), Ok(None));
        for bad in ["", "abc", "1,5", "NaN", "inf", "-1", "0.001", "1025", "1e9"] {
            assert!(parse_cores(bad).is_err(), "{bad}");
        }
        assert!(millicores_from_cores(f64::NAN).is_err());
        assert!(millicores_from_cores(-0.5).is_err());
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_cores(1500), "1.5");
        assert_eq!(format_cores(2000), "2");
        assert_eq!(format_cores(10), "0.01");
        assert_eq!(format_cores(1250), "1.25");
        assert_eq!(cores_of(1500), 1.5);
    }

    #[test]
    fn files_of_each_cgroup_version() {
        let half = CpuLimits {
            millicores: Some(500),
            shares: Some(1024),
        };
        assert_eq!(half.quota_us(), Some(50_000));
        assert_eq!(half.v2_max(), "50000 100000");
        assert_eq!(half.v2_weight(), Some(100), "v1's default is v2's default");
        let none = CpuLimits::default();
        assert!(none.is_empty());
        assert_eq!(none.v2_max(), "max 100000");
        assert_eq!(
            CpuLimits {
                millicores: None,
                shares: Some(2)
            }
            .v2_weight(),
            Some(1)
        );
        assert_eq!(
            CpuLimits {
                millicores: None,
                shares: Some(MAX_SHARES)
            }
            .v2_weight(),
            Some(10_000)
        );
    }

    #[test]
    fn weights_keep_their_order() {
        let weight = |shares| {
            CpuLimits {
                millicores: None,
                shares: Some(shares),
            }
            .v2_weight()
            .unwrap_or(0)
        };
        assert_eq!(weight(512), 59);
        let mut last = 0;
        for shares in [2, 3, 10, 100, 512, 1024, 2048, 100_000, 262_143, 262_144] {
            let w = weight(shares);
            assert!((1..=10_000).contains(&w) && w >= last, "{shares} -> {w}");
            last = w;
        }
    }

    #[test]
    fn ranges() {
        let bad_shares = CpuLimits {
            millicores: None,
            shares: Some(1),
        };
        assert_eq!(bad_shares.validate(), Err(CpuError::SharesOutOfRange(1)));
        let bad_cores = CpuLimits {
            millicores: Some(5),
            shares: None,
        };
        assert!(bad_cores.validate().is_err());
        assert!(CpuLimits {
            millicores: Some(1000),
            shares: Some(512)
        }
        .validate()
        .is_ok());
    }
}
