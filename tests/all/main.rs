mod common;
mod gpu_kernels;
mod gpu_training;
mod gradcheck;
mod shaders;
