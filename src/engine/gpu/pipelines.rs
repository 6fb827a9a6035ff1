//! Compiled kernels, cached: one shader module per family, one bind group layout per binding
//! signature, one compute pipeline per (entry point, override constants).
//!
//! Every kernel's binding 0 is a 256-byte slot of a uniform arguments buffer bound with a dynamic
//! offset (so one bind group serves every time step); the storage buffers follow in order.

use std::collections::HashMap;

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::plan::Constants;
use crate::engine::gpu::shaders::Shader;
use crate::error::Result;

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One WGSL entry point and the storage bindings (1, 2, ...) it expects after the arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    pub bindings: &'static [Access],
}

/// Bytes of one arguments slot (every `Args` struct of the shaders fits in it).
pub const ARGS_SLOT: u64 = 256;

type PipelineKey = (&'static str, Shader, Constants);

/// The pipeline cache.
#[derive(Default)]
pub struct Pipelines {
    modules: HashMap<Shader, wgpu::ShaderModule>,
    layouts: HashMap<&'static [Access], (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
}

impl Pipelines {
    /// The bind group layout of `kernel`.
    pub fn bind_group_layout(
        &mut self,
        ctx: &GpuContext,
        kernel: &Kernel,
    ) -> wgpu::BindGroupLayout {
        self.layout(ctx, kernel).0
    }

    fn layout(
        &mut self,
        ctx: &GpuContext,
        kernel: &Kernel,
    ) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        self.layouts
            .entry(kernel.bindings)
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(ARGS_SLOT),
                    },
                    count: None,
                }];
                for (i, access) in kernel.bindings.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: i as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: *access == Access::Read,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bgl = ctx
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(kernel.entry),
                        entries: &entries,
                    });
                let pl = ctx
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(kernel.entry),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (bgl, pl)
            })
            .clone()
    }

    /// The pipeline of `kernel` with the given override constants, compiled on first use.
    pub fn get(
        &mut self,
        ctx: &GpuContext,
        kernel: &Kernel,
        constants: &[(&'static str, u32)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = (kernel.entry, kernel.shader, constants.to_vec());
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let (_, layout) = self.layout(ctx, kernel);
        let module = self
            .modules
            .entry(kernel.shader)
            .or_insert_with(|| {
                ctx.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.shader.file()),
                        source: wgpu::ShaderSource::Wgsl(kernel.shader.source().into()),
                    })
            })
            .clone();
        let values: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &values,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        ctx.check(&format!(
            "compiling {} from {}",
            kernel.entry,
            kernel.shader.file()
        ))?;
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
