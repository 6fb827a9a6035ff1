//! Buffers recycled from one training step to the next, so that a step whose shapes repeat
//! allocates (and page-faults) nothing: the activations of the last forward, the gradients of
//! the last backward and the packed step weights go back here and come out again, zero-filled,
//! for arrays of the same length.

use ndarray::Array2;

use crate::engine::cpu::Float;
use crate::engine::variant::{CpuVariant, StepProduct};

/// At most this many free buffers are kept (a step needs about a dozen per layer); beyond it the
/// oldest are dropped, so shapes that stop coming back (an evaluation batch) are let go.
const KEPT: usize = 64;

/// Free buffers of the engine's float type, and of f32 for packed weights.
pub struct Pool<F> {
    free: Vec<Vec<F>>,
    packs: Vec<Vec<f32>>,
    /// Arrays that found no free buffer and were allocated.
    allocated: u64,
    /// How the time loops run their products and split their rows.
    choice: CpuVariant,
}

impl<F> Default for Pool<F> {
    fn default() -> Self {
        Pool {
            free: Vec::new(),
            packs: Vec::new(),
            allocated: 0,
            choice: CpuVariant::default(),
        }
    }
}

impl<F> Pool<F> {
    /// Runs the time loops that follow as `choice` says.
    pub fn set_choice(&mut self, choice: CpuVariant) {
        self.choice = choice;
    }

    /// How the time loops run.
    pub fn choice(&self) -> CpuVariant {
        self.choice
    }

    /// The blocks of batch rows of a time loop over `b` rows.
    pub fn row_parts(&self, b: usize) -> usize {
        self.choice.row_parts_or(b, super::rows::row_parts)
    }

    /// How the step products run.
    pub fn step_product(&self) -> StepProduct {
        self.choice.product
    }
}

impl<F: Float> Pool<F> {
    /// A zero-filled `[rows, cols]` array, on a recycled buffer of that length when there is one.
    pub fn zeros(&mut self, shape: (usize, usize)) -> Array2<F> {
        self.take(shape, true)
    }

    /// A `[rows, cols]` array for the caller to overwrite entirely: a recycled buffer keeps the
    /// values of an earlier step (no zero-fill), a new one is zero.
    pub fn overwritten(&mut self, shape: (usize, usize)) -> Array2<F> {
        self.take(shape, false)
    }

    fn take(&mut self, (rows, cols): (usize, usize), zero: bool) -> Array2<F> {
        let len = rows * cols;
        if len == 0 {
            return Array2::zeros((rows, cols));
        }
        let data = match self.free.iter().rposition(|v| v.len() == len) {
            Some(i) => {
                let mut v = self.free.remove(i);
                if zero {
                    v.fill(F::zero());
                }
                v
            }
            None => {
                self.allocated += 1;
                vec![F::zero(); len]
            }
        };
        Array2::from_shape_vec((rows, cols), data).unwrap_or_else(|_| Array2::zeros((rows, cols)))
    }

    /// Takes `a`'s buffer back for a later [`Pool::zeros`].
    pub fn give(&mut self, a: Array2<F>) {
        if a.is_empty() {
            return;
        }
        let (data, _) = a.into_raw_vec_and_offset();
        keep(&mut self.free, data);
    }

    /// A buffer for packed weights (any length; the packer sizes it).
    pub fn pack_buffer(&mut self) -> Vec<f32> {
        self.packs.pop().unwrap_or_default()
    }

    /// How many arrays [`Pool::zeros`] has allocated because no free buffer fitted.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Takes a packed-weight buffer back.
    pub fn give_pack(&mut self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            keep(&mut self.packs, buffer);
        }
    }
}

fn keep<T>(free: &mut Vec<Vec<T>>, data: Vec<T>) {
    if free.len() >= KEPT {
        free.remove(0);
    }
    free.push(data);
}
