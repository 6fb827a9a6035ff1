//! The WGSL sources, one file per kernel family under `shaders/`, compiled into the binary.
//! The families with per-step products (matmul, GRU, LSTM) are compiled with `rows.wgsl`, the
//! product they share, in front (WGSL has no includes).

/// Declares [`Shader`] from one table of variants and their files, in order: `files()`,
/// `file()` (the last one) and `source()` (the files' contents joined, through `include_str!`)
/// all come from that table.
macro_rules! shaders {
    ($($(#[$meta:meta])* $variant:ident => [$($file:literal),+],)+) => {
        /// A kernel family: one self-contained WGSL file.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Shader {
            $($(#[$meta])* $variant,)+
        }

        impl Shader {
            /// Every family, for validation.
            pub const ALL: [Shader; [$(Shader::$variant),+].len()] = [$(Shader::$variant),+];

            /// The files under `shaders/` its source is made of, in order: `rows.wgsl` in front
            /// of the families that use it, then [`Shader::file`].
            pub fn files(self) -> &'static [&'static str] {
                match self {
                    $(Shader::$variant => &[$($file),+],)+
                }
            }

            /// The WGSL source: its files joined in order.
            pub fn source(self) -> &'static str {
                match self {
                    $(Shader::$variant => {
                        concat!($(include_str!(concat!("../../../shaders/", $file))),+)
                    })+
                }
            }
        }
    };
}

shaders! {
    /// Tiled GEMM with transposed variants, accumulate flag and bias epilogue.
    Matmul => ["rows.wgsl", "matmul.wgsl"],
    /// The cell: one-hot gather and scatter, step forward, BPTT step.
    Rnn => ["rnn.wgsl"],
    /// The GRU's fused gates and state update, forward and BPTT step.
    Gru => ["rows.wgsl", "gru.wgsl"],
    /// The LSTM's fused gates and cell update, forward and BPTT step.
    Lstm => ["rows.wgsl", "lstm.wgsl"],
    /// The time reversal of a bidirectional layer's second direction (a row gather).
    Reverse => ["reverse.wgsl"],
    /// Dropout between layers with a counter-based mask.
    Dropout => ["dropout.wgsl"],
    /// Output nonlinearity + loss + gradient per row.
    Loss => ["loss.wgsl"],
    /// Column sums and flat sums (loss total, gradient norm).
    Reduce => ["reduce.wgsl"],
    /// The optimizer update over the flat buffer.
    Optim => ["optim.wgsl"],
}

impl Shader {
    /// The family's own file under `shaders/`: the last of [`Shader::files`].
    pub fn file(self) -> &'static str {
        self.files().last().copied().unwrap_or_default()
    }
}
