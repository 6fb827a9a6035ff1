//! Adapter and device set-up: the only place that talks to wgpu's instance and adapters.
//!
//! The GPU side of `--device auto|gpu|cpu` is decided here: `auto` takes a hardware GPU when wgpu
//! sees one ([`GpuContext::open_hardware`]; `None` means the CPU engine runs); `gpu` takes the
//! best adapter there is, software rasterisers (lavapipe, llvmpipe) included
//! ([`GpuContext::open`] with `allow_software`); `cpu` never opens a device. The device is opened
//! with the adapter's own limits, which are kept for the shape checks of `buffers.rs`, and an
//! uncaptured-error handler turns wgpu validation errors into [`Error::Gpu`] instead of panics.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::engine::variant::{GpuVariant, Variant};
use crate::error::{Error, Result};

/// What wgpu says about one adapter, for `unroll devices` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    /// Vulkan, Metal, Dx12, Gl.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
    pub driver: String,
    /// A software rasteriser (lavapipe, llvmpipe, WARP): used only when asked for.
    pub software: bool,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}{}{})",
            self.name,
            self.backend,
            self.device_type,
            if self.driver.is_empty() { "" } else { ", " },
            self.driver
        )?;
        if self.software {
            f.write_str(" [software: used only with --device gpu]")?;
        }
        Ok(())
    }
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "softpipe", "swiftshader", "warp"]
            .iter()
            .any(|s| name.contains(s))
}

fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: info.backend.to_string(),
        device_type: format!("{:?}", info.device_type),
        driver: [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        software: is_software(info),
    }
}

/// An instance over `backends` (`WGPU_BACKEND` and the other wgpu variables still apply).
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc.with_env())
}

fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance(backends).enumerate_adapters(backends))
        .into_iter()
        .filter(|a| a.get_info().backend != wgpu::Backend::Noop)
        .collect()
}

/// The adapters to choose from: Vulkan, Metal and DX12 ones, or GL ones when there are none
/// (starting GL only then keeps its driver's noise away on machines that do not need it).
fn candidates() -> Vec<wgpu::Adapter> {
    let primary = adapters(wgpu::Backends::PRIMARY);
    if primary.is_empty() {
        adapters(wgpu::Backends::SECONDARY)
    } else {
        primary
    }
}

/// Every adapter wgpu sees on this machine, on every backend (for `unroll devices`).
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(wgpu::Backends::all())
        .iter()
        .map(|a| summary(&a.get_info()))
        .collect()
}

/// Preference among adapters: discrete, integrated, virtual, other, software; Vulkan, Metal and
/// DX12 before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        _ if is_software(info) => 4,
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other | wgpu::DeviceType::Cpu => 3,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, backend)
}

/// Tunables chosen from the device's limits at start-up (WGSL override constants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// matmul.wgsl: threads per workgroup along x and y (each owns a 4x4 block of C).
    pub matmul_wg: (u32, u32),
    /// matmul.wgsl: depth of the K chunk in workgroup memory.
    pub matmul_k: u32,
    /// rnn.wgsl: side of the step kernels' square tile.
    pub rnn_tile: u32,
    /// Threads per workgroup of the element-wise and per-row kernels (a power of two).
    pub row_wg: u32,
    /// reduce.wgsl and optim.wgsl: threads per workgroup of the flat sums and the update.
    pub flat_wg: u32,
    /// rows.wgsl's per-step products (`matmul_rows`, the fused gated steps): threads per
    /// workgroup (a multiple of 8).
    pub rows_product_wg: u32,
    /// rows.wgsl's per-step products: the deepest slice of W staged in workgroup memory at once
    /// (a multiple of 8; shallower products stage exactly their depth, and fewer are staged
    /// where more columns per workgroup must fit beside the partial sums).
    pub rows_product_kc: u32,
    /// Hidden units per workgroup of the fused gated steps (gru.wgsl, lstm.wgsl); `None`: as
    /// many as fit rows.wgsl's columns forward, `ROWS_UNITS` backward.
    pub gated_units: Option<u32>,
}

impl Tunables {
    /// The largest of the default sizes that the limits allow.
    pub fn for_limits(limits: &wgpu::Limits) -> Self {
        let invocations = limits.max_compute_invocations_per_workgroup;
        let fits = |x: u32, y: u32| {
            x * y <= invocations
                && x <= limits.max_compute_workgroup_size_x
                && y <= limits.max_compute_workgroup_size_y
        };
        let matmul_wg = if fits(16, 16) { (16, 16) } else { (8, 8) };
        let rnn_tile = if fits(16, 16) { 16 } else { 8 };
        let flat = if invocations >= 256 && limits.max_compute_workgroup_size_x >= 256 {
            256
        } else {
            64
        };
        // The per-step products keep their columns of W (kc deep) and a partial sum per column
        // and thread in workgroup memory.
        Tunables {
            matmul_wg,
            matmul_k: 16,
            rnn_tile,
            row_wg: 64,
            flat_wg: flat,
            rows_product_wg: flat,
            rows_product_kc: rows_kc(limits, flat),
            gated_units: None,
        }
    }

    /// These tunables with the choices of `v` that are set; [`Error::Config`] for a value the
    /// device's limits do not allow.
    pub fn with_variant(self, limits: &wgpu::Limits, v: &GpuVariant) -> Result<Self> {
        let mut t = self;
        if let Some(w) = v.matmul_wg {
            t.matmul_wg = (w, w);
        }
        if let Some(k) = v.matmul_k {
            t.matmul_k = k;
        }
        if let Some(wg) = v.rows_product_wg {
            t.rows_product_wg = wg;
            t.rows_product_kc = rows_kc(limits, wg);
        }
        t.gated_units = v.gated_units.or(t.gated_units);
        match t.refusal(limits) {
            None => Ok(t),
            Some(why) => Err(Error::Config(format!(
                "this device cannot run the GPU variant \"{}\": {why}; tune again on it",
                Variant::Gpu(*v)
            ))),
        }
    }

    /// Why the device's limits refuse these tunables, if they do.
    fn refusal(&self, limits: &wgpu::Limits) -> Option<String> {
        let (wx, wy) = self.matmul_wg;
        let invocations = limits.max_compute_invocations_per_workgroup;
        let storage = limits.max_compute_workgroup_storage_size as usize;
        let threads_fit = |x: u32, y: u32| {
            x >= 1
                && y >= 1
                && x * y <= invocations
                && x <= limits.max_compute_workgroup_size_x
                && y <= limits.max_compute_workgroup_size_y
        };
        // matmul.wgsl stages TILE_K x 4 WG_Y and TILE_K x 4 WG_X floats.
        let gemm_bytes = self.matmul_k as usize * 4 * (wx + wy) as usize * 4;
        let units = self.gated_units.unwrap_or(1);
        if !threads_fit(wx, wy) || self.matmul_k == 0 || gemm_bytes > storage {
            Some(format!(
                "GEMM workgroups of {wx}x{wy} threads over {} deep chunks",
                self.matmul_k
            ))
        } else if !self.rows_product_wg.is_multiple_of(8) || !threads_fit(self.rows_product_wg, 1) {
            Some(format!(
                "{} threads per workgroup of the per-step products",
                self.rows_product_wg
            ))
        } else if units == 0 || units > 8 {
            Some(format!("{units} units per workgroup of the gated steps"))
        } else {
            None
        }
    }
}

/// The deepest slice of W the per-step products stage with `wg` threads per workgroup: 4
/// columns beside their partial sums (`rows_launch` lowers it for more), at most 2048.
fn rows_kc(limits: &wgpu::Limits, wg: u32) -> u32 {
    let floats = limits.max_compute_workgroup_storage_size as usize / 4;
    let kc = (floats.saturating_sub(4 * wg as usize) / 4).min(2048) / 8 * 8;
    kc.max(8) as u32
}

/// An open device: adapter info, device, queue, limits, tunables and the error sink.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: AdapterSummary,
    pub limits: wgpu::Limits,
    pub tunables: Tunables,
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Whether the adapter [`GpuContext::open`] would take has memory of its own (a discrete GPU),
/// found without opening it; `None` when it would find none. Software adapters and integrated
/// GPUs hold their buffers in the host's memory.
pub fn best_adapter_has_own_memory(allow_software: bool) -> Option<bool> {
    let mut found: Vec<wgpu::AdapterInfo> = candidates().iter().map(|a| a.get_info()).collect();
    found.sort_by_key(rank);
    let info = found
        .into_iter()
        .find(|i| allow_software || !is_software(i))?;
    Some(info.device_type == wgpu::DeviceType::DiscreteGpu && !is_software(&info))
}

impl GpuContext {
    /// Opens the best adapter; software adapters only with `allow_software`.
    pub fn open(allow_software: bool) -> Result<Self> {
        Self::open_nth(allow_software, 0)
    }

    /// Opens adapter `nth` (modulo their number) among the adapters as good as the best one
    /// (of its kind and backend: the GPUs of a machine with several): the GPU of the `nth`
    /// process of a data-parallel run on this machine. Software adapters only with
    /// `allow_software`.
    pub fn open_nth(allow_software: bool, nth: usize) -> Result<Self> {
        let mut found = candidates();
        found.sort_by_key(|a| rank(&a.get_info()));
        let seen: Vec<String> = found
            .iter()
            .map(|a| summary(&a.get_info()).to_string())
            .collect();
        let mut eligible: Vec<wgpu::Adapter> = found
            .into_iter()
            .filter(|a| allow_software || !is_software(&a.get_info()))
            .collect();
        let Some(best) = eligible.first().map(|a| rank(&a.get_info())) else {
            return Err(Error::Gpu(if seen.is_empty() {
                "wgpu finds no adapter (is a Vulkan, Metal, DX12 or GL driver installed? \
                 On Linux: mesa-vulkan-drivers)"
                    .into()
            } else {
                format!(
                    "no hardware GPU among the adapters: {}; pass --device gpu to use a \
                     software one",
                    seen.join("; ")
                )
            }));
        };
        eligible.retain(|a| rank(&a.get_info()) == best);
        let pick = nth % eligible.len();
        Self::from_adapter(eligible.swap_remove(pick))
    }

    /// `--device auto`: the best hardware GPU, or `None` when there is none (the caller then
    /// runs the CPU engine and says so). Software adapters are never taken here.
    pub fn open_hardware() -> Option<Self> {
        Self::open_nth(false, 0).ok()
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = summary(&adapter.get_info());
        let limits = adapter.limits();
        // Timestamp queries, where the adapter has them, for `unroll bench --profile`; they cost
        // nothing until a profile writes them.
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("unroll"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {info}: {e}")))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        let tunables = Tunables::for_limits(&limits);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            tunables,
            errors,
            lost,
        })
    }

    /// Turns the validation errors wgpu reported since the last check into an error.
    pub fn check(&self, during: &str) -> Result<()> {
        let lost = |ctx: &Self| ctx.lost.lock().ok().and_then(|l| l.clone());
        let mut errors = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("the error sink is poisoned".into()))?;
        if errors.is_empty() && lost(self).is_none() {
            return Ok(());
        }
        // A lost device shows first as validation errors of the work that follows; its
        // callback runs when the device is polled.
        let _ = self.device.poll(wgpu::PollType::Poll);
        let all = std::mem::take(&mut *errors).join("\n");
        if let Some(why) = lost(self) {
            return Err(Error::Gpu(format!(
                "the GPU device was lost ({why}) while {during}; checkpoints already on disk are \
                 intact: resume the run, or run it on --device cpu"
            )));
        }
        Err(Error::Gpu(format!("{during}: {all}")))
    }

    /// Whether the device writes timestamps at the start and end of compute passes.
    pub fn has_timestamps(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Blocks until the device has finished all submitted work.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        Ok(())
    }
}
