//! The engine of a data-parallel rank (`unroll::dist::Sharded`) against one engine on the whole
//! batch, with the ranks simulated by threads of this process (`ThreadGroup`), so these run in
//! every build; the MPI runs themselves are in `mpi.rs` (feature `mpi`).

use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};

use rand::RngExt;
use unroll::data::EvalSet;
use unroll::dist::{Group, Sharded, share};
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Batch, Dropout, EdgeDropout, Engine};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout, init_params};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::train::trainer::{evaluate_accuracy, train_step};

use crate::common::{assert_close, cell_config, random_batch, rng, to_f64};

/// What the threads of a [`ThreadGroup`] share: one slot per rank and a barrier.
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// Rank `rank` of `size` threads, exchanging bytes through [`Shared`]: every collective
/// operation is an all-gather, and the sums add the ranks' values in rank order, so every rank
/// gets the same bits (as MPI's all-reduce gives them).
struct ThreadGroup {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl ThreadGroup {
    fn sum<T: Copy + std::ops::Add<Output = T>>(
        &self,
        values: &mut [T],
        to: impl Fn(&T) -> Vec<u8>,
        from: impl Fn(&[u8]) -> T,
    ) -> unroll::Result<()> {
        let width = to(&values[0]).len();
        let mine: Vec<u8> = values.iter().flat_map(&to).collect();
        let all = self.all_gather_bytes(&mine)?;
        for (i, v) in values.iter_mut().enumerate() {
            let at = |r: usize| from(&all[r][i * width..(i + 1) * width]);
            *v = (1..self.size).fold(at(0), |acc, r| acc + at(r));
        }
        Ok(())
    }
}

impl Group for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn local_size(&self) -> usize {
        self.size
    }
    fn describe(&self) -> String {
        format!("{} threads", self.size)
    }
    fn sum_f32(&self, values: &mut [f32]) -> unroll::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.sum(
            values,
            |v| v.to_le_bytes().to_vec(),
            |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        )
    }
    fn sum_f64(&self, values: &mut [f64]) -> unroll::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.sum(
            values,
            |v| v.to_le_bytes().to_vec(),
            |b| f64::from_le_bytes(b[..8].try_into().unwrap()),
        )
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> unroll::Result<()> {
        let all = self.all_gather_bytes(bytes)?;
        *bytes = all[0].clone();
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> unroll::Result<Vec<Vec<u8>>> {
        self.shared.slots.lock().unwrap()[self.rank] = mine.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap().clone();
        // Nobody writes the next message before everyone has read this one.
        self.shared.barrier.wait();
        Ok(all)
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}

/// Runs `work` on `size` threads, each with its rank's [`Sharded`] engine over a CPU engine of
/// `config` and `params`; returns what each returned, in rank order.
fn on_ranks<T: Send>(
    size: usize,
    config: &ModelConfig,
    params: &[f32],
    work: impl Fn(&mut dyn Engine) -> T + Sync,
) -> Vec<T> {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(size),
        slots: Mutex::new(vec![Vec::new(); size]),
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let (shared, work) = (Arc::clone(&shared), &work);
                s.spawn(move || {
                    let group = Rc::new(ThreadGroup { rank, size, shared });
                    let inner = CpuEngine::<f32>::new(config, params).unwrap();
                    let mut engine = Sharded::new(Box::new(inner), group);
                    work(&mut engine)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `steps` training steps on `batches` (carrying the state between them when `carry`), then
/// the parameters and the carried state.
fn train(
    engine: &mut dyn Engine,
    batches: &[Batch],
    opt: &OptimizerConfig,
    carry: bool,
) -> (Vec<f32>, Vec<f32>) {
    for (i, b) in batches.iter().enumerate() {
        train_step(engine, b, i == 0 || !carry, opt, 0.1).unwrap();
    }
    (engine.params().unwrap(), engine.state().unwrap())
}

fn model(cell: Cell, rng: &mut rand_chacha::ChaCha8Rng) -> (ModelConfig, Vec<f32>) {
    let layers = rng.random_range(1..3);
    let config = cell_config(
        cell,
        InputKind::OneHot,
        OutputKind::Softmax,
        (5, 7, 5, layers),
    );
    let params = init_params(&config, &ParamLayout::new(&config).unwrap(), 3);
    (config, params)
}

/// N ranks train as one engine on the whole batch: stream-like batches (the state carried,
/// every step counted) and padded ones (masks of unequal lengths, the state reset), for every
/// cell, N = 2 and 3, SGD and Adam with clipping; the parameters of every rank are bitwise equal.
#[test]
fn ranks_train_as_one_engine_on_the_whole_batch() {
    let mut rng = rng("ranks_train_as_one_engine_on_the_whole_batch");
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for (size, kind, padded) in [
            (2, OptimizerKind::Sgd, false),
            (3, OptimizerKind::Adam, true),
            (3, OptimizerKind::Sgd, true),
            (2, OptimizerKind::Adam, false),
        ] {
            let (config, params) = model(cell, &mut rng);
            let (steps, rows) = (rng.random_range(1..5), 6);
            let lengths: Vec<usize> = (0..rows).map(|_| rng.random_range(1..=steps)).collect();
            let batches: Vec<Batch> = (0..4)
                .map(|_| {
                    random_batch(
                        &mut rng,
                        &config,
                        steps,
                        rows,
                        padded.then_some(&lengths[..]),
                    )
                })
                .collect();
            let opt = OptimizerConfig::new(kind).with_clip(1.0);
            let mut one = CpuEngine::<f32>::new(&config, &params).unwrap();
            let (want, want_state) = train(&mut one, &batches, &opt, !padded);
            let got = on_ranks(size, &config, &params, |e| {
                train(e, &batches, &opt, !padded)
            });
            let what = format!("{cell:?} N={size} {kind:?} padded={padded}");
            let rtol = if kind == OptimizerKind::Sgd {
                1e-5
            } else {
                1e-4
            };
            assert_close(&what, &to_f64(&got[0].0), &to_f64(&want), rtol, 1e-6);
            assert_close(&what, &to_f64(&got[0].1), &to_f64(&want_state), 1e-5, 1e-6);
            for (r, (p, s)) in got.iter().enumerate().skip(1) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(p), bits(&got[0].0), "{what}: rank {r}'s parameters");
                assert_eq!(bits(s), bits(&got[0].1), "{what}: rank {r}'s state");
            }
        }
    }
}

/// With dropout between layers and at the edges, N ranks draw the masks one engine draws for
/// the whole batch (each share in its row window), so they still train as one engine.
#[test]
fn ranks_draw_the_dropout_masks_of_the_whole_batch() {
    let mut rng = rng("ranks_draw_the_dropout_masks_of_the_whole_batch");
    for (cell, size) in [(Cell::Lstm, 2), (Cell::Gru, 3), (Cell::Rnn, 3)] {
        let mut config = cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (5, 6, 5, 2));
        config.embed = Some(4);
        let params = init_params(&config, &ParamLayout::new(&config).unwrap(), 5);
        let (steps, rows) = (3, 6);
        let batches: Vec<Batch> = (0..3)
            .map(|_| random_batch(&mut rng, &config, steps, rows, None))
            .collect();
        let opt = OptimizerConfig::new(OptimizerKind::Sgd);
        let seed: u64 = rng.random();
        let run = |e: &mut dyn Engine| {
            e.set_edge_dropout(EdgeDropout {
                embed: 0.25,
                out: 0.3,
            })
            .unwrap();
            for (i, b) in batches.iter().enumerate() {
                let dropout = Dropout {
                    p: 0.4,
                    seed: seed + i as u64,
                };
                e.set_dropout(Some(dropout)).unwrap();
                train_step(e, b, true, &opt, 0.1).unwrap();
            }
            e.params().unwrap()
        };
        let mut one = CpuEngine::<f32>::new(&config, &params).unwrap();
        let want = run(&mut one);
        let got = on_ranks(size, &config, &params, run);
        let what = format!("{cell:?} N={size} with dropout");
        assert_close(&what, &to_f64(&got[size - 1]), &to_f64(&want), 1e-5, 1e-6);
        let mut alone = CpuEngine::<f32>::new(&config, &params).unwrap();
        alone.set_dropout(None).unwrap();
        let without: Vec<f32> = {
            for b in &batches {
                train_step(&mut alone, b, true, &opt, 0.1).unwrap();
            }
            alone.params().unwrap()
        };
        let moved = want.iter().zip(&without).any(|(a, b)| (a - b).abs() > 1e-4);
        assert!(
            moved,
            "{what}: dropout changed nothing, so the test cannot tell masks apart"
        );
    }
}

/// A state set on all B rows reads back the same from every rank (each keeps its share).
#[test]
fn a_set_state_reads_back_whole() {
    let mut rng = rng("a_set_state_reads_back_whole");
    for cell in [Cell::Rnn, Cell::Lstm] {
        let (config, params) = model(cell, &mut rng);
        let rows = rng.random_range(3..8);
        let state: Vec<f32> = (0..rows * config.state_size_per_row())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let got = on_ranks(3, &config, &params, |e| {
            e.set_state(rows, &state).unwrap();
            e.state().unwrap()
        });
        for (r, s) in got.iter().enumerate() {
            assert_eq!(s, &state, "{cell:?} B={rows}: rank {r}");
        }
    }
}

/// Batches of evaluation, each starting from a zero state.
struct Batches(Vec<Batch>);

impl EvalSet for Batches {
    fn batches(&self) -> unroll::Result<Box<dyn Iterator<Item = Batch> + '_>> {
        Ok(Box::new(self.0.iter().cloned()))
    }
    fn carries_state(&self) -> bool {
        false
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn reports_accuracy(&self) -> bool {
        true
    }
}

/// Evaluation over ranks sums the loss and the accuracy counts of their shares, also when a
/// batch has fewer rows than ranks (some shares are empty) and when a share is all padding.
#[test]
fn evaluation_over_ranks_scores_every_row_once() {
    let mut rng = rng("evaluation_over_ranks_scores_every_row_once");
    let (config, params) = model(Cell::Gru, &mut rng);
    let steps = 4;
    let set = Batches(vec![
        random_batch(&mut rng, &config, steps, 5, Some(&[4, 1, 3, 2, 4])),
        random_batch(&mut rng, &config, steps, 2, None),
        random_batch(&mut rng, &config, steps, 1, Some(&[3])),
        // The last rows are padding only.
        random_batch(&mut rng, &config, steps, 4, Some(&[2, 3, 0, 0])),
    ]);
    let mut one = CpuEngine::<f32>::new(&config, &params).unwrap();
    let (want, want_acc) = evaluate_accuracy(&mut one, &set).unwrap();
    let got = on_ranks(3, &config, &params, |e| evaluate_accuracy(e, &set).unwrap());
    for (r, (loss, acc)) in got.iter().enumerate() {
        assert_eq!(loss.count, want.count, "rank {r}: counted steps");
        assert_close("loss", &[loss.sum], &[want.sum], 1e-6, 1e-9);
        assert_eq!(acc, &want_acc, "rank {r}: accuracy");
    }
}

/// The shares cover every row once, in order, differing by at most one row.
#[test]
fn shares_cover_the_rows_once() {
    for rows in 0..20 {
        for size in 1..6 {
            let shares: Vec<_> = (0..size).map(|r| share(rows, r, size)).collect();
            let flat: Vec<usize> = shares.iter().flat_map(|s| s.clone()).collect();
            assert_eq!(
                flat,
                (0..rows).collect::<Vec<_>>(),
                "{rows} rows, {size} ranks"
            );
            let lens: Vec<usize> = shares.iter().map(|s| s.len()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{rows} rows, {size} ranks: {lens:?}");
        }
    }
}
