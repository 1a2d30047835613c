//! Where the model and dictionaries compute, and in which precision.
//!
//! `cpu` computes in f32 (what the parity tests against transformers hold to ~1e-6).
//! `cuda[:N]` needs the CUDA build (`scripts/build_cuda.sh`, cargo feature `cuda`) and
//! computes in bf16 with f32 accumulation by default (cuBLAS), or f32 when asked (the
//! precision the GPU parity checks compare greedy generation in). Whatever the device,
//! what the engine hands back (hook captures, logits, codes) is f32.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{EngineError, Result};

/// A device named on the command line, in a config or in `LOUPE_DEVICE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || EngineError::InvalidInput(format!("device {s:?}: expected cpu, cuda or cuda:N (N a GPU ordinal, e.g. cuda:0)"));
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The precision of weights and activations on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    /// f32 on the CPU, bf16 on a GPU.
    #[default]
    Auto,
    F32,
    Bf16,
}

impl FromStr for Precision {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(EngineError::InvalidInput(format!("precision {s:?}: expected auto, f32 or bf16"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

macro_rules! string_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = EngineError;
            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
string_conversions!(DeviceChoice);
string_conversions!(Precision);

/// An opened device and the dtype the model computes in there.
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
}

impl Default for Compute {
    fn default() -> Self {
        Compute::cpu()
    }
}

impl Compute {
    /// The CPU in f32.
    pub fn cpu() -> Self {
        Compute { device: Device::Cpu, dtype: DType::F32 }
    }

    /// Opens `choice` with `precision`. A GPU in a build without CUDA, or one the driver
    /// does not see, is an error that says what to do.
    pub fn open(choice: DeviceChoice, precision: Precision) -> Result<Self> {
        let device = match choice {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(ordinal) => open_cuda(ordinal)?,
        };
        let dtype = match (precision, device.is_cpu()) {
            (Precision::F32, _) | (Precision::Auto, true) => DType::F32,
            (Precision::Bf16, true) => return Err(EngineError::InvalidInput("precision bf16 needs a GPU (--device cuda); the CPU computes in f32".into())),
            (Precision::Bf16, false) | (Precision::Auto, false) => DType::BF16,
        };
        Ok(Compute { device, dtype })
    }

    pub fn is_cpu(&self) -> bool {
        self.device.is_cpu()
    }

    /// Device memory the driver reports free, in bytes; `None` on the CPU (host memory is
    /// not what bounds a CPU batch).
    pub fn free_memory(&self) -> Result<Option<usize>> {
        match &self.device {
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => {
                use candle_core::cuda::WrapErr;
                let (free, _total) = cuda.cuda_stream().context().mem_get_info().w()?;
                Ok(Some(free))
            }
            _ => Ok(None),
        }
    }
}

/// Whether this binary was built with CUDA.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    if !cuda_built() {
        return Err(EngineError::InvalidInput(format!("device cuda:{ordinal}: this loupe was built without CUDA; build the CUDA binary (scripts/build_cuda.sh) or use --device cpu")));
    }
    Device::new_cuda(ordinal).map_err(|e| EngineError::InvalidInput(format!("device cuda:{ordinal}: {e} (is the NVIDIA driver loaded, and is there a GPU {ordinal}?)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (text, choice) in [("cpu", DeviceChoice::Cpu), ("CUDA", DeviceChoice::Cuda(0)), ("cuda:3", DeviceChoice::Cuda(3)), (" gpu ", DeviceChoice::Cuda(0))] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice, "{text}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string().parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(2));
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x", "metal"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad}: {err}");
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("half".parse::<Precision>().unwrap_err().to_string().contains("expected auto, f32 or bf16"));
    }

    #[test]
    fn the_cpu_computes_in_f32_and_refuses_bf16() {
        let cpu = Compute::open(DeviceChoice::Cpu, Precision::Auto).unwrap();
        assert!(cpu.is_cpu());
        assert_eq!(cpu.dtype, DType::F32);
        assert!(Compute::open(DeviceChoice::Cpu, Precision::Bf16).unwrap_err().to_string().contains("needs a GPU"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_without_the_cuda_build_says_how_to_get_one() {
        let err = Compute::open(DeviceChoice::Cuda(0), Precision::Auto).unwrap_err().to_string();
        assert!(err.contains("built without CUDA") && err.contains("scripts/build_cuda.sh"), "{err}");
    }
}
