mod common;
mod gpu_kernels;
mod gradcheck;
mod shaders;
