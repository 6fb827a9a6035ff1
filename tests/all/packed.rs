//! The CPU engine's step products with W packed once for the time loop
//! (`engine::cpu::packed`): every SIMD kernel this processor runs against `matmul` on fresh
//! random inputs, with awkward shapes (one row, rows off the kernel's 8 or 6, columns off the
//! 48 or 16 of a panel, depth 1), strided and transposed operands, and the threaded split; and
//! the same bits whatever the number of threads.

use ndarray::{Array2, ArrayView2, s};
use unroll::engine::cpu::matmul::matmul;
use unroll::engine::cpu::packed::{Kernel, PACK_MIN, StepWeight};

use crate::common::{self, assert_close, to_f64};

fn random(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), common::uniform(rng, rows * cols, 1.0)).unwrap()
}

#[test]
fn packed_step_products_match_matmul_for_every_kernel_and_awkward_shape() {
    let mut rng = common::rng("packed products");
    let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2]
        .into_iter()
        .filter(|k| k.supported())
        .collect();
    if kernels.is_empty() {
        eprintln!("packed products: no SIMD kernel on this processor; the fallback is matmul");
    }
    // (m, k, n): one row; rows off 8 and 6 (AVX2 runs blocks of 6 rows and the rest, 1 to 5
    // rows, in a block of 2, 4 or 6: every tail among these); columns off 48 and 16; depth
    // 1; and a product large enough to be split between threads.
    let shapes = [
        (1, 1, 1),
        (5, 8, 17),
        (11, 4, 18),
        (16, 20, 35),
        (1, 7, 40),
        (7, 3, 49),
        (6, 9, 97),
        (9, 5, 33),
        (13, 64, 31),
        (33, 17, 70),
        (32, 512, 300),
    ];
    for (m, k, n) in shapes {
        for kernel in &kernels {
            for transposed_w in [false, true] {
                let what = format!("{kernel:?} m={m} k={k} n={n} transposed W={transposed_w}");
                // op(W) [k, n], stored as W [n, k] (the forward's W_hh^T) or [k, n].
                let stored = if transposed_w {
                    random(&mut rng, n, k)
                } else {
                    random(&mut rng, k, n)
                };
                let w: ArrayView2<f32> = if transposed_w {
                    stored.t()
                } else {
                    stored.view()
                };
                let sw = StepWeight::with_kernel(w, Some(*kernel));
                assert_eq!(sw.kernel(), Some(*kernel), "{what}");
                // x as every other column of a wider array; c accumulated onto, column-major.
                let wide = random(&mut rng, m, 2 * k);
                let x = wide.slice(s![.., ..;2]);
                let c0 = random(&mut rng, n, m);
                let mut want = c0.t().to_owned();
                matmul(x, w, &mut want.view_mut(), true);
                let mut got_store = c0.clone();
                let mut got = got_store.view_mut().reversed_axes();
                sw.product(x, &mut got);
                let got: Vec<f32> = got.iter().copied().collect();
                let want: Vec<f32> = want.iter().copied().collect();
                assert_close(&what, &to_f64(&got), &to_f64(&want), 1e-5, 1e-5);
            }
        }
    }
}

#[test]
fn packed_step_products_give_the_same_bits_on_any_number_of_threads() {
    let Some(kernel) = Kernel::detect() else {
        eprintln!("packed threads: no SIMD kernel on this processor");
        return;
    };
    let mut rng = common::rng("packed threads");
    let (m, k, n) = (32, 512, 320);
    let w = random(&mut rng, n, k);
    let x = random(&mut rng, m, k);
    let sw = StepWeight::with_kernel(w.t(), Some(kernel));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = Array2::<f32>::zeros((m, n));
        pool.install(|| sw.product(x.view(), &mut c.view_mut()));
        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let one = run(1);
    assert!(one.iter().any(|&b| b != 0));
    for threads in [2, 3] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn small_or_f64_weights_stay_with_matmul() {
    let mut rng = common::rng("packed fallback");
    // At most PACK_MIN values: the GEMM keeps it.
    let small = random(&mut rng, 64, 64);
    assert_eq!(StepWeight::new(small.view()).kernel(), None);
    // f64 never packs (the kernels are f32); its products still add x W.
    let w64 = Array2::<f64>::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64 * 0.5);
    let x64 = Array2::<f64>::from_shape_fn((2, 3), |(i, j)| (i + j) as f64 - 1.0);
    let sw = StepWeight::new(w64.t().reversed_axes());
    assert_eq!(sw.kernel(), None);
    let mut c = Array2::<f64>::ones((2, 4));
    sw.product(x64.view(), &mut c.view_mut());
    let want = x64.dot(&w64) + 1.0;
    assert_eq!(c, want);
    // A large f32 weight packs where the processor has a kernel.
    let big = random(&mut rng, 2 * PACK_MIN / 512, 512);
    assert_eq!(StepWeight::new(big.view()).kernel(), Kernel::detect());
}

#[test]
fn gated_layers_with_packed_weights_match_the_f64_engine_over_whole_steps() {
    use unroll::engine::Engine;
    use unroll::engine::cpu::CpuEngine;
    use unroll::model::{Cell, ModelConfig, ParamLayout};
    // H = 300: an LSTM's W_hh^T [300, 1200] and a GRU's [300, 900] exceed PACK_MIN, so the f32
    // engine runs its step products on the packed kernel (where the processor has one), forward
    // and BPTT; the f64 engine runs them through matmul.
    for cell in [Cell::Gru, Cell::Lstm] {
        let cfg = ModelConfig {
            cell,
            ..ModelConfig::language_model(5, 300, 1)
        };
        assert!(300 * cfg.cell.gates() * 300 > PACK_MIN);
        let mut rng = common::rng(&format!("packed engine {cell:?}"));
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.1);
        let mut e32 = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        let mut e64 = CpuEngine::<f64>::new(&cfg, &params).unwrap();
        let (steps, rows) = (4, 9);
        for e in [&mut e32 as &mut dyn Engine, &mut e64] {
            e.reset_state(rows).unwrap();
        }
        let batch = common::random_batch(&mut rng, &cfg, steps, rows, None);
        let mut out = Vec::new();
        for e in [&mut e32 as &mut dyn Engine, &mut e64] {
            e.upload_batch(&batch).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
            out.push((
                e.loss().unwrap().sum,
                e.grads().unwrap(),
                e.state().unwrap(),
            ));
        }
        let what = format!("{cell:?}");
        assert_close(
            &format!("{what} loss"),
            &[out[0].0],
            &[out[1].0],
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{what} gradients"),
            &to_f64(&out[0].1),
            &to_f64(&out[1].1),
            1e-3,
            1e-5,
        );
        assert_close(
            &format!("{what} state"),
            &to_f64(&out[0].2),
            &to_f64(&out[1].2),
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn repeated_training_steps_allocate_no_new_step_arrays() {
    use unroll::engine::Engine;
    use unroll::engine::cpu::CpuEngine;
    use unroll::model::{Cell, ModelConfig, ParamLayout};
    use unroll::train::optim::{OptimizerConfig, OptimizerKind};
    // Every cell, two layers (the input of the upper one through dropout), an embedding.
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = ModelConfig {
            cell,
            embed: Some(3),
            ..ModelConfig::language_model(7, 6, 2)
        };
        let mut rng = common::rng(&format!("step allocations {cell:?}"));
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.3);
        let mut e = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        e.set_dropout(Some(unroll::engine::Dropout { p: 0.3, seed: 1 }))
            .unwrap();
        e.reset_state(2).unwrap();
        let opt = OptimizerConfig::new(OptimizerKind::Sgd);
        let mut after = Vec::new();
        for _ in 0..4 {
            let batch = common::random_batch(&mut rng, &cfg, 3, 2, None);
            e.upload_batch(&batch).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
            e.optimizer_step(&opt, 0.1).unwrap();
            e.carry_state().unwrap();
            after.push(e.step_allocations());
        }
        assert!(
            after[0] > 0,
            "{cell:?}: the first step allocates its arrays"
        );
        assert_eq!(
            after[1], after[3],
            "{cell:?}: later steps allocated {after:?}"
        );
    }
}
