//! The phases of a training step, and the time each took, for `unroll bench --profile`: the GPU
//! engine times them on the device with timestamp queries (`gpu::profile`), the CPU engine with
//! the wall clock around the same parts of its calls ([`PhaseClock`]).

use std::time::Instant;

/// The parts of a training step, in the order the engine runs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepPhase {
    /// Embedding, dropout between layers and the input projection over all T*B rows.
    Input,
    /// The T recurrent steps of every layer, forward.
    ForwardRecurrence,
    /// Output GEMM, fused softmax/loss and the loss sum (and, when the output layer runs in
    /// chunks, its recomputation in the backward).
    Output,
    /// dW_o, db_o and dS = dlogits W_o.
    OutputBackward,
    /// BPTT through the T steps of every layer.
    BackwardRecurrence,
    /// dW_hh, the bias gradients, dW_ih and the gradient into the layer below or the embedding.
    WeightGradients,
    /// Gradient norm, clipping and the parameter update.
    Optimizer,
    /// Anything not tagged (one-off work).
    #[default]
    Other,
}

impl StepPhase {
    /// Every phase, in step order.
    pub const ALL: [StepPhase; 8] = [
        StepPhase::Input,
        StepPhase::ForwardRecurrence,
        StepPhase::Output,
        StepPhase::OutputBackward,
        StepPhase::BackwardRecurrence,
        StepPhase::WeightGradients,
        StepPhase::Optimizer,
        StepPhase::Other,
    ];

    /// The phase's name in profiles (the CPU profile's names where the phases correspond).
    pub fn name(self) -> &'static str {
        match self {
            StepPhase::Input => "input projection (embedding, dropout, W_ih x)",
            StepPhase::ForwardRecurrence => "forward recurrence (T steps)",
            StepPhase::Output => "output GEMM + softmax cross-entropy",
            StepPhase::OutputBackward => "output backward GEMMs (dW_o, db_o, dS)",
            StepPhase::BackwardRecurrence => "backward recurrence (T steps)",
            StepPhase::WeightGradients => "weight-gradient GEMMs (dW_hh, biases, dW_ih)",
            StepPhase::Optimizer => "optimizer (norm + clip + SGD)",
            StepPhase::Other => "other kernels",
        }
    }

    pub(crate) fn index(self) -> usize {
        StepPhase::ALL
            .iter()
            .position(|&p| p == self)
            .unwrap_or(StepPhase::ALL.len() - 1)
    }
}

/// Time per phase (device time on the GPU, wall clock on the CPU), summed since the last
/// [`Engine::take_phase_times`](crate::engine::Engine::take_phase_times).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Nanoseconds per phase, indexed like [`StepPhase::ALL`].
    pub ns: [f64; StepPhase::ALL.len()],
    /// GPU: compute passes timed (0 on the CPU).
    pub passes: u64,
    /// GPU: compute passes left untimed (more in one submit than a query set holds); their
    /// time is in no phase.
    pub untimed_passes: u64,
}

impl PhaseTimes {
    /// The nanoseconds of `phase`.
    pub fn of(&self, phase: StepPhase) -> f64 {
        self.ns[phase.index()]
    }

    /// The sum over every phase.
    pub fn total(&self) -> f64 {
        self.ns.iter().sum()
    }

    /// Adds `ns` nanoseconds to `phase`.
    pub fn add(&mut self, phase: StepPhase, ns: f64) {
        self.ns[phase.index()] += ns;
    }
}

/// The CPU engine's phase timer: the wall clock from one phase boundary to the next, inside
/// the engine's calls only (each call ends with [`PhaseClock::stop`]).
#[derive(Debug, Default)]
pub struct PhaseClock {
    times: PhaseTimes,
    open: Option<(StepPhase, Instant)>,
}

impl PhaseClock {
    /// Ends the open phase (if any) and starts `phase`.
    pub fn enter(&mut self, phase: StepPhase) {
        let now = Instant::now();
        self.close(now);
        self.open = Some((phase, now));
    }

    /// Ends the open phase.
    pub fn stop(&mut self) {
        self.close(Instant::now());
    }

    fn close(&mut self, now: Instant) {
        if let Some((phase, t0)) = self.open.take() {
            self.times
                .add(phase, now.duration_since(t0).as_secs_f64() * 1e9);
        }
    }

    /// The times since the last call, and a fresh count.
    pub fn take(&mut self) -> PhaseTimes {
        self.stop();
        std::mem::take(&mut self.times)
    }
}

/// [`PhaseClock::enter`] on an optional clock.
pub fn enter(clock: &mut Option<PhaseClock>, phase: StepPhase) {
    if let Some(c) = clock.as_mut() {
        c.enter(phase);
    }
}

/// [`PhaseClock::stop`] on an optional clock.
pub fn stop(clock: &mut Option<PhaseClock>) {
    if let Some(c) = clock.as_mut() {
        c.stop();
    }
}
