//! The WGSL sources, one file per kernel family under `shaders/`, compiled into the binary.
//! The families with per-step products (matmul, GRU, LSTM) are compiled with `rows.wgsl`, the
//! product they share, in front (WGSL has no includes).

/// A kernel family: one self-contained WGSL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// Tiled GEMM with transposed variants, accumulate flag and bias epilogue.
    Matmul,
    /// The cell: one-hot gather and scatter, step forward, BPTT step.
    Rnn,
    /// The GRU's fused gates and state update, forward and BPTT step.
    Gru,
    /// The LSTM's fused gates and cell update, forward and BPTT step.
    Lstm,
    /// Dropout between layers with a counter-based mask.
    Dropout,
    /// Output nonlinearity + loss + gradient per row.
    Loss,
    /// Column sums and flat sums (loss total, gradient norm).
    Reduce,
    /// The optimizer update over the flat buffer.
    Optim,
}

impl Shader {
    /// Every family, for validation.
    pub const ALL: [Shader; 8] = [
        Shader::Matmul,
        Shader::Rnn,
        Shader::Gru,
        Shader::Lstm,
        Shader::Dropout,
        Shader::Loss,
        Shader::Reduce,
        Shader::Optim,
    ];

    /// The file name under `shaders/`.
    pub fn file(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul.wgsl",
            Shader::Rnn => "rnn.wgsl",
            Shader::Gru => "gru.wgsl",
            Shader::Lstm => "lstm.wgsl",
            Shader::Dropout => "dropout.wgsl",
            Shader::Loss => "loss.wgsl",
            Shader::Reduce => "reduce.wgsl",
            Shader::Optim => "optim.wgsl",
        }
    }

    /// The files under `shaders/` its source is made of, in order: `rows.wgsl` in front of the
    /// families that use it, then [`Shader::file`].
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Shader::Matmul => &["rows.wgsl", "matmul.wgsl"],
            Shader::Gru => &["rows.wgsl", "gru.wgsl"],
            Shader::Lstm => &["rows.wgsl", "lstm.wgsl"],
            Shader::Rnn => &["rnn.wgsl"],
            Shader::Dropout => &["dropout.wgsl"],
            Shader::Loss => &["loss.wgsl"],
            Shader::Reduce => &["reduce.wgsl"],
            Shader::Optim => &["optim.wgsl"],
        }
    }

    /// The WGSL source (with `rows.wgsl` in front where the family uses it).
    pub fn source(self) -> &'static str {
        match self {
            Shader::Matmul => concat!(
                include_str!("../../../shaders/rows.wgsl"),
                include_str!("../../../shaders/matmul.wgsl")
            ),
            Shader::Rnn => include_str!("../../../shaders/rnn.wgsl"),
            Shader::Gru => concat!(
                include_str!("../../../shaders/rows.wgsl"),
                include_str!("../../../shaders/gru.wgsl")
            ),
            Shader::Lstm => concat!(
                include_str!("../../../shaders/rows.wgsl"),
                include_str!("../../../shaders/lstm.wgsl")
            ),
            Shader::Dropout => include_str!("../../../shaders/dropout.wgsl"),
            Shader::Loss => include_str!("../../../shaders/loss.wgsl"),
            Shader::Reduce => include_str!("../../../shaders/reduce.wgsl"),
            Shader::Optim => include_str!("../../../shaders/optim.wgsl"),
        }
    }
}
