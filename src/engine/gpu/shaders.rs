//! The WGSL sources, one file per kernel family under `shaders/`, compiled into the binary.

/// A kernel family: one self-contained WGSL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// Tiled GEMM with transposed variants, accumulate flag and bias epilogue.
    Matmul,
    /// The cell: one-hot gather and scatter, step forward, BPTT step.
    Rnn,
    /// Output nonlinearity + loss + gradient per row.
    Loss,
    /// Column sums and flat sums (loss total, gradient norm).
    Reduce,
    /// The optimizer update over the flat buffer.
    Optim,
}

impl Shader {
    /// Every family, for validation.
    pub const ALL: [Shader; 5] = [
        Shader::Matmul,
        Shader::Rnn,
        Shader::Loss,
        Shader::Reduce,
        Shader::Optim,
    ];

    /// The file name under `shaders/`.
    pub fn file(self) -> &'static str {
        match self {
            Shader::Matmul => "matmul.wgsl",
            Shader::Rnn => "rnn.wgsl",
            Shader::Loss => "loss.wgsl",
            Shader::Reduce => "reduce.wgsl",
            Shader::Optim => "optim.wgsl",
        }
    }

    /// The WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Shader::Matmul => include_str!("../../../shaders/matmul.wgsl"),
            Shader::Rnn => include_str!("../../../shaders/rnn.wgsl"),
            Shader::Loss => include_str!("../../../shaders/loss.wgsl"),
            Shader::Reduce => include_str!("../../../shaders/reduce.wgsl"),
            Shader::Optim => include_str!("../../../shaders/optim.wgsl"),
        }
    }
}
