//! The activation of a dictionary whose encoder is on a GPU: pre-activations stay on the
//! device, the activation's element-wise part runs as candle ops there, and loupe's selection
//! kernel (`select.cu`, compiled to PTX by build.rs with the CUDA build's nvcc) turns each row
//! into its active latents, so that only those leave the device (TopK: k index/value pairs
//! a token instead of d_sae floats). Semantics are those of `activation.rs` on the host.

use std::sync::{Arc, Mutex};

use candle_core::cuda::cudarc::driver::{CudaContext, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits};
use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{DType, Device, Storage, Tensor};

use super::activation::Activation;
use super::sparse::SparseActs;
use crate::error::{EngineError, Result};

const SELECT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/select.ptx"));

/// Threads per row; select.cu's THREADS.
const THREADS: u32 = 256;

/// Room per row for threshold activations (ReLU, JumpReLU, gated): a row with more active
/// latents than this is read back densely (rare: SAEs are trained to a few dozen to a few
/// hundred). The batch planner counts the same room (memory.rs).
const THRESHOLD_CAP: usize = crate::memory::SELECT_ROOM_THRESHOLD;

/// Per-latent parameters of the activation, on the encoder's device.
pub(super) struct LatentParams {
    decoder_norms: Option<Tensor>,
    threshold: Option<Tensor>,
    gated: Option<[Tensor; 3]>,
    staging: Mutex<Staging>,
}

/// Page-locked host buffers the selection's results are copied into, so that the copies run
/// at the link's speed; kept from batch to batch, since page-locking memory is slow.
#[derive(Default)]
struct Staging {
    index: Option<PinnedHostSlice<u32>>,
    value: Option<PinnedHostSlice<f32>>,
    meta: Option<PinnedHostSlice<u32>>,
}

/// The first `len` values of `buffer`, reallocated (half again as large) when too short.
fn staged<'a, T: DeviceRepr + ValidAsZeroBits>(buffer: &'a mut Option<PinnedHostSlice<T>>, len: usize, context: &Arc<CudaContext>) -> Result<&'a mut [T]> {
    let pinned = match buffer.take() {
        Some(kept) if kept.len() >= len => kept,
        too_short => {
            drop(too_short);
            // SAFETY: the memory is uninitialised until a copy fills it, and only the part a
            // copy filled is read. Flags 0: cached memory the host reads (not write-combined).
            unsafe { context.alloc_pinned_with_flags::<T>((len + len / 2).max(1), 0) }.w()?
        }
    };
    let whole = buffer.insert(pinned).as_mut_slice().w()?;
    Ok(&mut whole[..len])
}

impl LatentParams {
    pub(super) fn new(activation: &Activation, decoder_norms: Option<&[f32]>, device: &Device) -> Result<Self> {
        let on = |v: &[f32]| Tensor::from_slice(v, v.len(), device);
        Ok(LatentParams {
            decoder_norms: decoder_norms.map(on).transpose()?,
            threshold: match activation {
                Activation::JumpRelu { threshold } => Some(on(threshold)?),
                _ => None,
            },
            gated: match activation {
                Activation::Gated { r_mag_exp, b_mag, b_gate } => Some([on(r_mag_exp)?, on(b_mag)?, on(b_gate)?]),
                _ => None,
            },
            staging: Mutex::new(Staging::default()),
        })
    }
}

/// Sparse features of the pre-activations `pre` `[n, d_sae]` (f32, on a GPU).
pub(super) fn activate(activation: &Activation, pre: &Tensor, params: &LatentParams) -> Result<SparseActs> {
    let pre = match &params.decoder_norms {
        Some(norms) => pre.broadcast_mul(norms)?,
        None => pre.clone(),
    };
    let missing = |what: &str| EngineError::InvalidInput(format!("{} activation without its {what} on the device", activation.name()));
    match activation {
        Activation::TopK { k } => select_rows(&pre, *k, *k, params),
        Activation::Relu => select_rows(&pre.relu()?, 0, THRESHOLD_CAP, params),
        Activation::JumpRelu { .. } => {
            let threshold = params.threshold.as_ref().ok_or_else(|| missing("thresholds"))?;
            // Strictly above the threshold, then ReLU.
            let active = (pre.relu()? * pre.broadcast_gt(threshold)?.to_dtype(DType::F32)?)?;
            select_rows(&active, 0, THRESHOLD_CAP, params)
        }
        Activation::Gated { .. } => {
            let [r_mag_exp, b_mag, b_gate] = params.gated.as_ref().ok_or_else(|| missing("gate and magnitude parameters"))?;
            let open = pre.broadcast_add(b_gate)?.gt(0.0)?.to_dtype(DType::F32)?;
            let magnitude = pre.broadcast_mul(r_mag_exp)?.broadcast_add(b_mag)?.relu()?;
            select_rows(&(magnitude * open)?, 0, THRESHOLD_CAP, params)
        }
        Activation::GroupMax { k } => group_max(&pre, *k),
    }
}

/// One value per group (k groups): the group's maximum, ReLU'd, zeros dropped.
fn group_max(pre: &Tensor, k: usize) -> Result<SparseActs> {
    let (n, d_sae) = pre.dims2()?;
    let group = d_sae / k.max(1);
    if group == 0 {
        return Ok(SparseActs::from_rows(d_sae, vec![Vec::new(); n]));
    }
    let groups = pre.narrow(1, 0, group * k)?.reshape((n, k, group))?;
    let offsets: Vec<u32> = groups.argmax(2)?.flatten_all()?.to_vec1()?;
    let maxima: Vec<f32> = groups.max(2)?.flatten_all()?.to_vec1()?;
    let rows = (0..n)
        .map(|t| {
            (0..k)
                .filter_map(|g| {
                    let value = maxima[t * k + g].max(0.0);
                    (value > 0.0).then_some(((g * group) as u32 + offsets[t * k + g], value))
                })
                .collect()
        })
        .collect();
    Ok(SparseActs::from_rows(d_sae, rows))
}

/// Runs `loupe_select_rows` (select.cu): the top `k` of each row (k > 0), or its non-zero
/// values (k = 0), at most `cap` a row, in index order; rows of more are read densely.
fn select_rows(values: &Tensor, k: usize, cap: usize, params: &LatentParams) -> Result<SparseActs> {
    let values = values.to_dtype(DType::F32)?.contiguous()?;
    let (n, d_sae) = values.dims2()?;
    let Device::Cuda(device) = values.device() else {
        return Err(EngineError::InvalidInput("the GPU selection kernel runs on CUDA tensors only".into()));
    };
    let cap = cap.max(k).max(1);
    // Packed offsets are u32: at most u32::MAX slots a launch.
    let rows_a_launch = (u32::MAX as usize / cap).max(1);
    let mut staging = params.staging.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut rows = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let chunk = rows_a_launch.min(n - first);
        select_chunk(device, &values.narrow(0, first, chunk)?, k, cap, &mut staging, &mut rows)?;
        first += chunk;
    }
    Ok(SparseActs::from_rows(d_sae, rows))
}

/// [`select_rows`] on `values` `[n, d_sae]` (n * cap < 2^32), appending one row a token.
fn select_chunk(device: &CudaDevice, values: &Tensor, k: usize, cap: usize, staging: &mut Staging, rows: &mut Vec<Vec<(u32, f32)>>) -> Result<()> {
    let (n, d_sae) = values.dims2()?;
    // SAFETY (both): the kernel writes every count and offset, and the host reads only the
    // packed slots the rows claimed (below packed_used).
    let (mut out_index, mut out_value) = unsafe { (device.alloc::<u32>(n * cap)?, device.alloc::<f32>(n * cap)?) };
    let (mut out_count, mut out_offset) = unsafe { (device.alloc::<u32>(n)?, device.alloc::<u32>(n)?) };
    let mut packed_used = device.alloc_zeros::<u32>(1)?;
    {
        let (storage, layout) = values.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            return Err(EngineError::InvalidInput("the GPU selection kernel runs on CUDA tensors only".into()));
        };
        let input = storage.as_cuda_slice::<f32>()?.slice(layout.start_offset()..);
        let func = device.get_or_load_custom_func("loupe_select_rows", "loupe_select", SELECT_PTX)?;
        let (rows32, width, k32, cap32) = (n as u32, d_sae as u32, k as u32, cap as u32);
        let mut launch = func.builder();
        launch.arg(&input).arg(&rows32).arg(&width).arg(&k32).arg(&cap32).arg(&mut out_index).arg(&mut out_value).arg(&mut out_count).arg(&mut out_offset).arg(&mut packed_used);
        let config = LaunchConfig { grid_dim: (rows32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match the kernel's signature (a [n, d_sae] f32 input, four
        // u32s, [n * cap] u32 and f32 outputs, [n] u32 counts and offsets, one u32 counter
        // zeroed above), every buffer has the length the kernel indexes, and the input is
        // contiguous from its start offset.
        unsafe { launch.launch(config) }.w()?;
    }
    // Counts, offsets and how many slots were claimed; then only those slots. Copies into
    // page-locked memory are asynchronous (cudarc syncs nothing for a plain host slice, and
    // the copy length is the destination's: each destination is exactly its source's length):
    // the stream is synchronised before the host reads.
    let stream = device.cuda_stream();
    let context = stream.context().clone();
    let meta = staged(&mut staging.meta, 2 * n + 1, &context)?;
    stream.memcpy_dtoh(&out_count, &mut meta[..n]).w()?;
    stream.memcpy_dtoh(&out_offset, &mut meta[n..2 * n]).w()?;
    stream.memcpy_dtoh(&packed_used, &mut meta[2 * n..]).w()?;
    stream.synchronize().w()?;
    let used = meta[2 * n] as usize;
    let indices = staged(&mut staging.index, used, &context)?;
    let chosen = staged(&mut staging.value, used, &context)?;
    if used > 0 {
        stream.memcpy_dtoh(&out_index.slice(..used), &mut *indices).w()?;
        stream.memcpy_dtoh(&out_value.slice(..used), &mut *chosen).w()?;
        stream.synchronize().w()?;
    }
    for t in 0..n {
        let (count, at) = (meta[t] as usize, meta[n + t] as usize);
        if count <= cap {
            rows.push(indices[at..at + count].iter().copied().zip(chosen[at..at + count].iter().copied()).collect());
        } else {
            // More active latents than the room: read this row whole.
            let row: Vec<f32> = values.get(t)?.to_vec1()?;
            rows.push(row.iter().enumerate().filter(|&(_, &v)| v != 0.0).map(|(i, &v)| (i as u32, v)).collect());
        }
    }
    Ok(())
}
