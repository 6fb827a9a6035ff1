//! Every gradient of the CPU engine against central finite differences in f64.

use rand::RngExt;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Dropout, Engine};
use unroll::model::{
    Activation, Cell, InputKind, ModelConfig, OutputKind, ParamLayout, init_params,
};

use crate::common::{self, assert_close};

/// Checks every parameter's gradient of `cfg` on a random masked batch with unequal lengths and
/// a random carried-in initial state.
fn check(cfg: &ModelConfig, steps: usize, rows: usize, name: &str) {
    check_with_dropout(cfg, steps, rows, None, name)
}

/// [`check`] with dropout between the layers (a fixed mask, so the loss stays differentiable).
fn check_with_dropout(
    cfg: &ModelConfig,
    steps: usize,
    rows: usize,
    dropout: Option<Dropout>,
    name: &str,
) {
    check_gradients(cfg, steps, rows, dropout, None, name)
}

/// [`check_with_dropout`] with the output layer's logit budget set (`None`: the default).
pub fn check_gradients(
    cfg: &ModelConfig,
    steps: usize,
    rows: usize,
    dropout: Option<Dropout>,
    logit_budget: Option<usize>,
    name: &str,
) {
    check_gradients_of(cfg, (steps, rows), dropout, logit_budget, None, name)
}

/// [`check_gradients`] of every parameter, or with `per_tensor = Some(k)` of k random elements
/// of each tensor plus the output-layer rows of the batch's target classes (for models too
/// large to difference whole).
pub fn check_gradients_of(
    cfg: &ModelConfig,
    (steps, rows): (usize, usize),
    dropout: Option<Dropout>,
    logit_budget: Option<usize>,
    per_tensor: Option<usize>,
    name: &str,
) {
    let mut rng = common::rng(name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.6);
    let mut engine = CpuEngine::<f64>::new(cfg, &params).unwrap();
    engine.set_dropout(dropout).unwrap();
    if let Some(budget) = logit_budget {
        engine.set_logit_budget(budget).unwrap();
    }
    let lengths: Vec<usize> = (0..rows)
        .map(|b| if b == 0 { steps } else { 1 + (b * 7) % steps })
        .collect();
    let batch = common::random_batch(&mut rng, cfg, steps, rows, Some(&lengths));
    let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
    engine.set_state(rows, &state).unwrap();
    engine.upload_batch(&batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let analytic = engine.grads_native().to_vec();
    // Central differences of a loss L carry a rounding error of about |L| 1e-16 / eps.
    let atol = 1e-9 * engine.loss().unwrap().mean().abs().max(1.0);
    let base: Vec<f64> = engine.params_native().to_vec();
    let eps = 1e-6;
    let indices: Vec<usize> = match per_tensor {
        None => (0..base.len()).collect(),
        Some(k) => {
            let mut picked: Vec<usize> = layout
                .specs()
                .iter()
                .flat_map(|spec| {
                    let r = spec.range();
                    (0..k)
                        .map(|_| rng.random_range(r.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            if let unroll::engine::Targets::Classes(y) = &batch.targets {
                let h = cfg.output_width();
                for &c in y {
                    let row = layout.out_weight() + c as usize * h;
                    picked.extend(row..row + h);
                    picked.push(layout.out_bias() + c as usize);
                }
            }
            picked.sort_unstable();
            picked.dedup();
            picked
        }
    };
    let mut numeric = vec![0.0; base.len()];
    let mut p = base.clone();
    for &i in &indices {
        p[i] = base[i] + eps;
        engine.set_params_native(&p).unwrap();
        engine.forward().unwrap();
        let plus = engine.loss().unwrap().mean();
        p[i] = base[i] - eps;
        engine.set_params_native(&p).unwrap();
        engine.forward().unwrap();
        let minus = engine.loss().unwrap().mean();
        p[i] = base[i];
        numeric[i] = (plus - minus) / (2.0 * eps);
    }
    let analytic: Vec<f64> = indices.iter().map(|&i| analytic[i]).collect();
    let numeric: Vec<f64> = indices.iter().map(|&i| numeric[i]).collect();
    assert!(
        analytic.iter().any(|g| g.abs() > 1e-3),
        "{name}: gradients are all tiny"
    );
    assert_close(name, &analytic, &numeric, 1e-6, atol);
}

#[test]
fn softmax_rnn_gradients_match_finite_differences() {
    for &(act, layers) in &[
        (Activation::Tanh, 1),
        (Activation::Tanh, 2),
        (Activation::Relu, 2),
    ] {
        let cfg = common::config(
            act,
            InputKind::OneHot,
            OutputKind::Softmax,
            (5, 4, 5, layers),
        );
        check(&cfg, 5, 3, &format!("softmax {act:?} layers={layers}"));
    }
}

#[test]
fn identity_rnn_gradients_match_finite_differences() {
    for &(act, layers) in &[
        (Activation::Tanh, 1),
        (Activation::Tanh, 3),
        (Activation::Relu, 1),
    ] {
        let cfg = common::config(
            act,
            InputKind::Dense,
            OutputKind::Identity,
            (3, 4, 2, layers),
        );
        check(&cfg, 4, 3, &format!("identity {act:?} layers={layers}"));
    }
}

#[test]
fn sigmoid_rnn_gradients_match_finite_differences() {
    for &(input, layers) in &[(InputKind::Dense, 1), (InputKind::OneHot, 2)] {
        let cfg = common::config(
            Activation::Tanh,
            input,
            OutputKind::Sigmoid,
            (4, 3, 3, layers),
        );
        check(&cfg, 4, 2, &format!("sigmoid {input:?} layers={layers}"));
    }
}

#[test]
fn gradients_match_finite_differences_at_one_step_and_one_row() {
    let cfg = common::config(
        Activation::Tanh,
        InputKind::OneHot,
        OutputKind::Softmax,
        (3, 2, 3, 1),
    );
    check(&cfg, 1, 1, "T=1 B=1");
}

/// Every parameter of a `cell` model, one and several layers, every input and output kind.
fn check_cell(cell: Cell) {
    for &(input, output, layers) in &[
        (InputKind::OneHot, OutputKind::Softmax, 1),
        (InputKind::OneHot, OutputKind::Softmax, 2),
        (InputKind::Dense, OutputKind::Identity, 3),
        (InputKind::Dense, OutputKind::Sigmoid, 1),
    ] {
        let cfg = common::cell_config(cell, input, output, (4, 3, 4, layers));
        check(
            &cfg,
            5,
            3,
            &format!("{cell:?} {input:?} {output:?} layers={layers}"),
        );
    }
}

#[test]
fn gru_gradients_match_finite_differences() {
    check_cell(Cell::Gru);
}

#[test]
fn lstm_gradients_match_finite_differences() {
    check_cell(Cell::Lstm);
}

#[test]
fn gated_gradients_match_finite_differences_at_one_step_and_one_row() {
    for cell in [Cell::Gru, Cell::Lstm] {
        let cfg = common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (3, 2, 3, 2));
        check(&cfg, 1, 1, &format!("{cell:?} T=1 B=1"));
    }
}

#[test]
fn gradients_with_dropout_match_finite_differences() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (4, 5, 4, 3));
        let dropout = Some(Dropout { p: 0.3, seed: 11 });
        check_with_dropout(&cfg, 4, 3, dropout, &format!("{cell:?} dropout"));
    }
}

#[test]
fn pytorch_initialisation_is_seeded_and_bounded() {
    let cfg = ModelConfig::language_model(65, 100, 2);
    let layout = ParamLayout::new(&cfg).unwrap();
    let a = init_params(&cfg, &layout, 7);
    let b = init_params(&cfg, &layout, 7);
    let c = init_params(&cfg, &layout, 8);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let bound = 1.0 / (100f32).sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound));
    assert!(a.iter().any(|v| v.abs() > 0.9 * bound));
}

#[test]
fn gated_layouts_stack_the_gates_and_the_forget_bias_can_start_at_one() {
    let (v, h) = (11, 6);
    for (cell, g) in [(Cell::Gru, 3), (Cell::Lstm, 4)] {
        let cfg = ModelConfig {
            cell,
            ..ModelConfig::language_model(v, h, 2)
        };
        let layout = ParamLayout::new(&cfg).unwrap();
        let shape = |name: &str| layout.get(name).unwrap().shape.clone();
        assert_eq!(shape("rnn.weight_ih_l0"), vec![g * h, v]);
        assert_eq!(shape("rnn.weight_ih_l1"), vec![g * h, h]);
        assert_eq!(shape("rnn.weight_hh_l1"), vec![g * h, h]);
        assert_eq!(shape("rnn.bias_ih_l1"), vec![g * h]);
        assert_eq!(shape("rnn.bias_hh_l0"), vec![g * h]);
        let mut params = init_params(&cfg, &layout, 3);
        let bound = 1.0 / (h as f32).sqrt();
        assert!(params.iter().all(|p| p.abs() <= bound));
        let result = unroll::model::set_forget_bias_one(&cfg, &layout, &mut params);
        assert_eq!(result.is_ok(), cell == Cell::Lstm);
        if cell == Cell::Lstm {
            for k in 0..2 {
                let (bias_ih, bias_hh) = layout.layer(k).biases().unwrap();
                assert!(
                    params[bias_ih + h..bias_ih + 2 * h]
                        .iter()
                        .all(|&b| b == 1.0)
                );
                assert!(
                    params[bias_hh + h..bias_hh + 2 * h]
                        .iter()
                        .all(|&b| b == 0.0)
                );
                assert!(
                    params[bias_ih..bias_ih + h]
                        .iter()
                        .all(|&b| b.abs() <= bound)
                );
            }
        }
    }
}

#[test]
fn fast_f32_exp_is_accurate_to_a_few_ulps() {
    let mut worst = (0.0f32, 0.0f64);
    let mut x = -87.0f32;
    while x <= 87.9 {
        let got = unroll::engine::cpu::exp_f32(x) as f64;
        let want = (x as f64).exp();
        let err = (got - want).abs() / want;
        if err > worst.1 {
            worst = (x, err);
        }
        x += 1.0e-3 * (1.0 + x.abs()).min(10.0);
    }
    assert!(
        worst.1 < 3e-7,
        "worst relative error {} at x = {}",
        worst.1,
        worst.0
    );
    assert_eq!(unroll::engine::cpu::exp_f32(0.0), 1.0);
    // Far below the range it flushes to (nearly) nothing, never to a NaN or a negative.
    for x in [-88.0f32, -1e3, f32::NEG_INFINITY] {
        let e = unroll::engine::cpu::exp_f32(x);
        assert!((0.0..1.2e-38).contains(&e), "exp({x}) = {e}");
    }
}

#[test]
fn fast_f32_tanh_is_accurate_to_a_few_ulps() {
    let mut worst = (0.0f32, 0.0f64);
    let mut x = -12.0f32;
    while x <= 12.0 {
        let got = unroll::engine::cpu::tanh_f32(x) as f64;
        let want = (x as f64).tanh();
        let err = (got - want).abs() / want.abs().max(1e-30);
        if err > worst.1 {
            worst = (x, err);
        }
        x += 1.0e-3 * (1.0 + x.abs());
    }
    for x in [0.0f32, 1e-30, -1e-20, 1e-7, 3e-4, -0.0] {
        let got = unroll::engine::cpu::tanh_f32(x) as f64;
        let want = (x as f64).tanh();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs(),
            "tanh({x}) = {got}, want {want}"
        );
    }
    assert!(
        worst.1 < 1e-6,
        "worst relative error {} at x = {}",
        worst.1,
        worst.0
    );
}
