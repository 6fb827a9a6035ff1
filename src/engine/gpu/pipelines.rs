//! Compiled kernels, cached: one shader module per family, one bind group layout per binding
//! signature, one compute pipeline per (entry point, override constants).
//!
//! Every kernel's binding 0 is a 256-byte slot of a uniform arguments buffer bound with a dynamic
//! offset (so one bind group serves every time step); the storage buffers follow in order.
//!
//! The host side of each kernel's interface is declared here once: `args_mirror!` declares an
//! `#[repr(C)]` mirror of a shader's arguments struct together with its field table
//! ([`ArgsLayout`]), and `kernels!` declares a launcher file's [`Kernel`] statics together with
//! the list of them (`KERNELS`). The integration tests compare both with the WGSL through naga.

use std::collections::HashMap;

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::shaders::Shader;
use crate::error::Result;

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One WGSL entry point, the arguments struct at its binding 0 and the storage bindings (1, 2,
/// ...) it expects after the arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    /// The layout of the mirror of its arguments struct.
    pub args: ArgsLayout,
    pub bindings: &'static [Access],
}

/// Bytes of one arguments slot (every `Args` struct of the shaders fits in it).
pub const ARGS_SLOT: u64 = 256;

/// WGSL override constants by name.
pub type Constants = Vec<(&'static str, u32)>;

/// The layout of an arguments mirror, as `args_mirror!` declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsLayout {
    /// The Rust struct's name.
    pub name: &'static str,
    /// The WGSL struct it mirrors (`Args`, or `RowsArgs` in matmul.wgsl).
    pub wgsl: &'static str,
    /// Bytes of the struct.
    pub size: usize,
    /// The fields in declaration order.
    pub fields: &'static [ArgsField],
}

/// One field of an arguments mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsField {
    pub name: &'static str,
    /// Byte offset in the struct.
    pub offset: usize,
    /// Bytes of the field.
    pub size: usize,
    /// The field's Rust type as written (`u32`, `f32`, `[u32; 3]`).
    pub ty: &'static str,
    /// The names the WGSL structs give the member at this offset: the field's own name, unless
    /// the mirror lists others (a struct shared by two shaders that name a member differently).
    pub wgsl: &'static [&'static str],
}

impl ArgsField {
    /// Whether the field only pads the struct (named `pad...`; the WGSL names its padding
    /// members `_pad0`, `_pad1`, ...).
    pub fn is_padding(&self) -> bool {
        self.name.starts_with("pad")
    }
}

/// A `#[repr(C)]` mirror of a WGSL arguments struct, declared by `args_mirror!`.
pub trait ArgsMirror: bytemuck::Pod {
    /// Its field table.
    const LAYOUT: ArgsLayout;
}

/// Declares the `#[repr(C)]` mirror of a WGSL arguments struct and, from the same tokens, its
/// [`ArgsLayout`] as the associated const `LAYOUT`; fails to compile when the struct does not
/// fit [`ARGS_SLOT`]. A field the WGSL names otherwise lists the WGSL names after `as`:
/// `pub flag: u32 as "has_prev" | "has_next"`.
macro_rules! args_mirror {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident mirrors $wgsl:literal {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty $(as $($alias:literal)|+)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty,)*
        }

        impl $name {
            /// The field table of this mirror.
            pub const LAYOUT: $crate::engine::gpu::pipelines::ArgsLayout =
                $crate::engine::gpu::pipelines::ArgsLayout {
                    name: stringify!($name),
                    wgsl: $wgsl,
                    size: ::std::mem::size_of::<$name>(),
                    fields: &[$($crate::engine::gpu::pipelines::ArgsField {
                        name: stringify!($field),
                        offset: ::std::mem::offset_of!($name, $field),
                        size: ::std::mem::size_of::<$ty>(),
                        ty: stringify!($ty),
                        wgsl: $crate::engine::gpu::pipelines::args_mirror!(
                            @wgsl $field $($($alias)|+)?
                        ),
                    }),*],
                };
        }

        impl $crate::engine::gpu::pipelines::ArgsMirror for $name {
            const LAYOUT: $crate::engine::gpu::pipelines::ArgsLayout = $name::LAYOUT;
        }

        const _: () = assert!(
            ::std::mem::size_of::<$name>() <= $crate::engine::gpu::pipelines::ARGS_SLOT as usize,
            concat!(stringify!($name), " does not fit an arguments slot"),
        );
    };
    (@wgsl $field:ident) => {
        &[stringify!($field)]
    };
    (@wgsl $field:ident $($alias:literal)|+) => {
        &[$($alias),+]
    };
}
pub(crate) use args_mirror;

/// Declares a launcher file's [`Kernel`] statics, one line each after the file's shader:
/// `NAME = "entry", ArgsMirror, [Read, ReadWrite, ...];` (or a `&[Access]` const in place of the
/// list), and `KERNELS`, the list of them all.
macro_rules! kernels {
    (
        shader: $shader:ident;
        $($(#[$meta:meta])* $name:ident = $entry:literal, $args:ident, $bindings:tt;)+
    ) => {
        $(
            $(#[$meta])*
            pub static $name: $crate::engine::gpu::pipelines::Kernel =
                $crate::engine::gpu::pipelines::Kernel {
                    shader: $crate::engine::gpu::shaders::Shader::$shader,
                    entry: $entry,
                    args: $args::LAYOUT,
                    bindings: $crate::engine::gpu::pipelines::kernels!(@bindings $bindings),
                };
        )+

        /// Every kernel this file launches.
        pub static KERNELS: &[&$crate::engine::gpu::pipelines::Kernel] = &[$(&$name),+];
    };
    (@bindings [$($access:ident),* $(,)?]) => {
        &[$($crate::engine::gpu::pipelines::Access::$access),*]
    };
    (@bindings $bindings:ident) => {
        $bindings
    };
}
pub(crate) use kernels;

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
