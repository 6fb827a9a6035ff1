// optim.wgsl: one update over the flat parameter buffer, PyTorch's rules, the twin of
// `src/engine/cpu/optim.rs`. The kernel knows nothing of the parameter layout.
//
// The clip factor is computed here from the global gradient norm that reduce.wgsl left in the
// scratch buffer, so clipping needs no host round trip. A non-finite norm leaves every
// parameter and moment untouched (the host reports the divergence when it reads the norm).
//
// Tunables (override constants): WG threads per workgroup.

override WG: u32 = 256u;

struct Args {
    // Number of parameters.
    n: u32,
    // 0 SGD, 1 momentum, 2 Adam, 3 RMSprop, 4 Adagrad (`OptimizerKind::index`).
    kind: u32,
    // Slot of the gradient norm in `scratch`.
    norm_slot: u32,
    _pad0: u32,
    lr: f32,
    // Adam: lr / (1 - b1^t) and sqrt(1 - b2^t), computed on the host in f64 and rounded.
    step_size: f32,
    bias_correction2: f32,
    // Clip by global norm (0: off), L2 weight decay.
    clip: f32,
    weight_decay: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    alpha: f32,
    eps: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> args: Args;
@group(0) @binding(1) var<storage, read> scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// For every i: g = scale * grads[i] + wd * params[i], scale = min(1, clip / (norm + 1e-6))
// when clip > 0 (else 1), then
//   SGD:      p -= lr g
//   momentum: m = mu m + g;                           p -= lr m
//   Adam:     m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//             p -= step_size m / (sqrt(v) / bias_correction2 + eps)
//   RMSprop:  v = a v + (1-a) g^2;                    p -= lr g / (sqrt(v) + eps)
//   Adagrad:  v += g^2;                               p -= lr g / (sqrt(v) + eps)
// Shapes: params, grads, m, v [n]. Grid: n threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn optimizer_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= args.n) {
        return;
    }
    let norm = scratch[args.norm_slot];
    if (!is_finite(norm)) {
        return;
    }
    var scale = 1.0;
    if (args.clip > 0.0) {
        scale = min(1.0, args.clip / (norm + 1e-6));
    }
    let p = params[i];
    let g = grads[i] * scale + args.weight_decay * p;
    switch args.kind {
        case 0u: {
            params[i] = p - args.lr * g;
        }
        case 1u: {
            let mi = args.momentum * m[i] + g;
            m[i] = mi;
            params[i] = p - args.lr * mi;
        }
        case 2u: {
            let mi = args.beta1 * m[i] + (1.0 - args.beta1) * g;
            let vi = args.beta2 * v[i] + (1.0 - args.beta2) * g * g;
            m[i] = mi;
            v[i] = vi;
            params[i] = p - args.step_size * mi / (sqrt(vi) / args.bias_correction2 + args.eps);
        }
        case 3u: {
            let vi = args.alpha * v[i] + (1.0 - args.alpha) * g * g;
            v[i] = vi;
            params[i] = p - args.lr * g / (sqrt(vi) + args.eps);
        }
        default: {
            let vi = v[i] + g * g;
            v[i] = vi;
            params[i] = p - args.lr * g / (sqrt(vi) + args.eps);
        }
    }
}
