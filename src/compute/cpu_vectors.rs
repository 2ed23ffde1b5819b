//! Which vector instructions the CPU's matrix products run with.
//!
//! burn-flex and graft's CPU kernels multiply through the `gemm` crate, which picks its
//! kernels once per process by what the CPU offers: 512-bit AVX-512 kernels where
//! `avx512f` is present, 256-bit FMA kernels where only `fma` is, NEON on ARM. The
//! kernels sum some products in another order (their dot-product kernels reduce
//! across vector lanes), so the last bits of a CPU run depend on this choice. It is
//! not an option (a process cannot pick another), so it is recorded on every CPU
//! execution as a fact of the machine, `compute.cpu_vectors`: a resume or reproduce on
//! a machine with other vectors names the difference instead of promising bit identity.

use serde::{Deserialize, Serialize};

/// The kernel family `gemm` dispatches to on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuVectors {
    Avx512f,
    Fma,
    Neon,
    Scalar,
}

impl CpuVectors {
    /// What an execution recorded before this key existed ran with, taken to be
    /// this machine: graft's builds then left gemm's AVX-512 kernels out, so an
    /// AVX-512 CPU took the FMA path; other CPUs took what they take today.
    pub fn before_recorded() -> CpuVectors {
        match CpuVectors::of_this_machine() {
            CpuVectors::Avx512f => CpuVectors::Fma,
            other => other,
        }
    }

    /// The family `gemm` picks here, by the same tests in the same order as its
    /// dispatch (`gemm-common`'s `init_gemm_fn`, with the `x86-v4` feature on).
    pub fn of_this_machine() -> CpuVectors {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                CpuVectors::Avx512f
            } else if std::arch::is_x86_feature_detected!("fma") {
                CpuVectors::Fma
            } else {
                CpuVectors::Scalar
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                CpuVectors::Neon
            } else {
                CpuVectors::Scalar
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
        {
            CpuVectors::Scalar
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CpuVectors::Avx512f => "avx512f",
            CpuVectors::Fma => "fma",
            CpuVectors::Neon => "neon",
            CpuVectors::Scalar => "scalar",
        }
    }
}

/// Runs `body` compiled for the widest vectors this CPU has (the build targets
/// baseline x86-64, SSE2). For loops of element-wise arithmetic only: Rust never fuses
/// a multiply and an add, so each lane computes the scalar operations and the width
/// changes no bit (unlike gemm's kernels above).
#[inline(always)]
pub fn in_widest_vectors<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { with_avx512(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { with_avx2(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_name_reads_back() {
        for vectors in [
            CpuVectors::Avx512f,
            CpuVectors::Fma,
            CpuVectors::Neon,
            CpuVectors::Scalar,
        ] {
            let json = serde_json::to_value(vectors).unwrap();
            assert_eq!(json, serde_json::Value::String(vectors.as_str().into()));
            assert_eq!(serde_json::from_value::<CpuVectors>(json).unwrap(), vectors);
        }
    }
}
