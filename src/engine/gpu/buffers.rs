//! Device buffers: allocation checked against the device's limits, uploads, and staged
//! read-back (copy into a mappable buffer, map, wait).
//!
//! Every buffer is a flat array of 4-byte elements (f32 or u32) bound whole; kernels address
//! matrices inside it by element offset.

use bytemuck::Pod;

use crate::engine::gpu::context::GpuContext;
use crate::error::{Error, Result};

/// A storage buffer of `elements` 4-byte values, zero-filled, labelled `label`. Shapes beyond
/// the device's `max_buffer_size` or `max_storage_buffer_binding_size` give [`Error::Shape`].
pub fn storage(ctx: &GpuContext, label: &str, elements: usize) -> Result<wgpu::Buffer> {
    let bytes = (elements.max(4) as u64)
        .checked_mul(4)
        .ok_or_else(|| Error::Shape(format!("{label}: {elements} elements overflow")))?;
    let limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size);
    if bytes > limit {
        return Err(Error::Shape(format!(
            "{label} needs {bytes} bytes but {} binds at most {limit} bytes per buffer; \
             use fewer time steps or rows per batch, or a smaller model",
            ctx.info.name
        )));
    }
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.check(&format!("allocating {label}"))?;
    Ok(buffer)
}

/// A storage buffer holding `data`.
pub fn storage_with<T: Pod>(ctx: &GpuContext, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
    let buffer = storage(ctx, label, std::mem::size_of_val(data).div_ceil(4))?;
    write(ctx, &buffer, 0, data);
    Ok(buffer)
}

/// Queues a write of `data` at element `offset`; it lands before the next submitted commands.
pub fn write<T: Pod>(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: usize, data: &[T]) {
    if !data.is_empty() {
        ctx.queue
            .write_buffer(buffer, offset as u64 * 4, bytemuck::cast_slice(data));
    }
}

/// Reads `count` 4-byte values from element `offset` of `buffer`, waiting for all submitted work.
pub fn read<T: Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: usize,
    count: usize,
) -> Result<Vec<T>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let bytes = count as u64 * 4;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    encoder.copy_buffer_to_buffer(buffer, offset as u64 * 4, &staging, 0, bytes);
    ctx.queue.submit([encoder.finish()]);
    map_read(ctx, &staging, bytes, "reading back")
}

/// Maps the first `bytes` of a `MAP_READ` buffer once all submitted work is done, and copies
/// them out as `T`s.
pub fn map_read<T: Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
    during: &str,
) -> Result<Vec<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    ctx.check(during)?;
    rx.recv()
        .map_err(|_| Error::Gpu(format!("{during}: the mapping never completed")))?
        .map_err(|e| Error::Gpu(format!("{during}: mapping the buffer: {e}")))?;
    let view = buffer
        .get_mapped_range(0..bytes)
        .map_err(|e| Error::Gpu(format!("{during}: reading the mapped buffer: {e}")))?;
    let out = bytemuck::pod_collect_to_vec::<u8, T>(&view);
    drop(view);
    buffer.unmap();
    Ok(out)
}

/// A matrix or vector inside a buffer: the buffer and the element offset of its first value.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: usize,
}

/// `Region { buffer, offset }`.
pub fn at(buffer: &wgpu::Buffer, offset: usize) -> Region<'_> {
    Region { buffer, offset }
}
