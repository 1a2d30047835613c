//! The GPU selection kernel (src/dictionary/select.cu) checked on the CPU: the kernel's own
//! source runs under a block emulator (tests/host_cuda/cuda_on_cpu.h: one std::thread per
//! CUDA thread, a barrier for __syncthreads) and its sparse codes are compared with the
//! definition of TopK (the k largest, then ReLU, ties at the k-th value to the lowest indices,
//! by a full sort here) and with the host path (`activation::top_k`) on rows without ties.
//! Needs a C++20 compiler (`c++`, or $CXX); the GPU machine checks speed and the real device.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use loupe_engine::dictionary::activation::top_k;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn emulator(dir: &Path) -> PathBuf {
    common::cuda_kernel_on_cpu("block_emulator.cpp", "src/dictionary/select.cu", dir)
}

/// (count, index/value pairs written) per row, as the kernel returns them: a row that fits its
/// room is read at its packed offset; one that does not has nothing written.
type Selected = Vec<(usize, Vec<(u32, f32)>)>;

fn run(exe: &Path, dir: &Path, rows: &[Vec<f32>], k: usize, cap: usize) -> Selected {
    let (n, d) = (rows.len(), rows[0].len());
    let mut input: Vec<u8> = [n as u32, d as u32, k as u32, cap as u32].iter().flat_map(|v| v.to_le_bytes()).collect();
    input.extend(rows.iter().flatten().flat_map(|v| v.to_le_bytes()));
    let (input_path, output_path) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input_path, input).unwrap();
    let status = Command::new(exe).arg(&input_path).arg(&output_path).status().unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&output_path).unwrap();
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    let used = word(2 * n) as usize;
    let (indices, values) = (2 * n + 1, 2 * n + 1 + n * cap);
    let mut claimed = vec![false; used];
    let selected: Selected = (0..n)
        .map(|r| {
            let (count, offset) = (word(r) as usize, word(n + r));
            if count > cap {
                assert_eq!(offset, u32::MAX, "row {r}: an overflowing row claims no room");
                return (count, Vec::new());
            }
            let at = offset as usize;
            assert!(at + count <= used, "row {r}: slots {at}..{} past the {used} claimed", at + count);
            for slot in &mut claimed[at..at + count] {
                assert!(!*slot, "row {r}: slot {at} claimed twice");
                *slot = true;
            }
            (count, (at..at + count).map(|j| (word(indices + j), f32::from_bits(word(values + j)))).collect())
        })
        .collect();
    assert!(claimed.iter().all(|&c| c), "every claimed slot belongs to a row");
    selected
}

/// TopK by definition: sort by value descending then index, keep k, ReLU, drop zeros.
fn top_k_by_sort(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut kept: Vec<(u32, f32)> = order.into_iter().take(k).filter(|&i| row[i] > 0.0).map(|i| (i as u32, row[i])).collect();
    kept.sort_by_key(|&(i, _)| i);
    kept
}

fn normal_rows(rng: &mut rand::rngs::StdRng, n: usize, d: usize, levels: Option<f32>) -> Vec<Vec<f32>> {
    (0..n)
        .map(|r| {
            (0..d)
                .map(|_| {
                    let v: f32 = StandardNormal.sample(rng);
                    let v = match levels {
                        Some(step) => (v / step).round() * step, // many exact ties
                        None => v,
                    };
                    if r == 1 {
                        -v.abs() - 0.5 // nothing positive: an empty row
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn top_k_selection_matches_the_definition_and_the_host_path() {
    let dir = tempfile::tempdir().unwrap();
    let exe = emulator(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Widths below, at and above one block's 256 threads, uneven segments, k up to d.
    for (d, k) in [(1000, 32), (100, 8), (4096, 64), (300, 300), (257, 1), (64, 100), (2048, 2048)] {
        let rows = normal_rows(&mut rng, 5, d, None);
        let got = run(&exe, dir.path(), &rows, k, k);
        for (r, row) in rows.iter().enumerate() {
            let expected = top_k_by_sort(row, k);
            assert_eq!(got[r].0, expected.len(), "d={d} k={k} row {r}: count");
            assert_eq!(got[r].1, expected, "d={d} k={k} row {r}");
            assert_eq!(got[r].1, top_k(row, k), "d={d} k={k} row {r}: host path");
        }
    }
    // Exact ties at the k-th value: the lowest indices win, as documented.
    for (d, k) in [(5000, 64), (700, 33), (257, 5)] {
        let rows = normal_rows(&mut rng, 4, d, Some(0.5));
        let got = run(&exe, dir.path(), &rows, k, k);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(got[r].1, top_k_by_sort(row, k), "ties: d={d} k={k} row {r}");
        }
    }
}

#[test]
fn threshold_rows_keep_every_non_zero_in_index_order_and_report_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let exe = emulator(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let d = 3000;
    // Already activated rows (ReLU'd): about half the latents are non-zero.
    let rows: Vec<Vec<f32>> = normal_rows(&mut rng, 4, d, None).into_iter().map(|row| row.into_iter().map(|v| v.max(0.0)).collect()).collect();
    let sparse: Vec<Vec<f32>> = rows.iter().map(|row| row.iter().enumerate().map(|(i, &v)| if i % 50 == 0 { v } else { 0.0 }).collect()).collect();
    let cap = 100;
    for (set, input) in [("dense", &rows), ("sparse", &sparse)] {
        let got = run(&exe, dir.path(), input, 0, cap);
        for (r, row) in input.iter().enumerate() {
            let expected: Vec<(u32, f32)> = row.iter().enumerate().filter(|&(_, &v)| v != 0.0).map(|(i, &v)| (i as u32, v)).collect();
            assert_eq!(got[r].0, expected.len(), "{set} row {r}: the count is every non-zero, even past the room");
            let written: &[(u32, f32)] = if expected.len() <= cap { &expected } else { &[] };
            assert_eq!(got[r].1, written, "{set} row {r}: every non-zero in index order, or nothing past the room");
        }
    }
}
