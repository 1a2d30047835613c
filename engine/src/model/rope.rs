//! Rotary position embeddings in Hugging Face's half-split convention (`rotate_half`).

use candle_core::{Device, Tensor};

/// `cos` and `sin` tables `[seq, head_dim / 2]` for positions `offset..offset + seq`,
/// computed in f32 the way transformers does (inverse frequencies, then position products).
pub fn tables(theta: f64, head_dim: usize, offset: usize, seq: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for pos in offset..offset + seq {
        for &f in &inv_freq {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (seq, half), &Device::Cpu)?, Tensor::from_vec(sin, (seq, half), &Device::Cpu)?))
}
