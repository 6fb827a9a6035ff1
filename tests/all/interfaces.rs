//! The host side of every kernel's interface against the WGSL, through naga: each registered
//! `Kernel` names an entry point of its shader's module, binds a uniform arguments struct at 0
//! whose members the Rust mirror has at the same offsets, sizes and names, and storage buffers
//! at 1..n with the access it lists; and every WGSL entry point has exactly one `Kernel`.

use std::collections::BTreeMap;

use naga::{AddressSpace, GlobalVariable, Handle, Module, StorageAccess, TypeInner};
use unroll::engine::gpu::pipelines::{ARGS_SLOT, Access, ArgsLayout, Kernel};
use unroll::engine::gpu::shaders::Shader;
use unroll::engine::gpu::{dropout, gru, loss, lstm, matmul, optim, reduce, reverse, rnn};

/// Every registered kernel: the `KERNELS` list of each launcher file.
fn registry() -> Vec<&'static Kernel> {
    [
        matmul::KERNELS,
        rnn::KERNELS,
        gru::KERNELS,
        lstm::KERNELS,
        dropout::KERNELS,
        reverse::KERNELS,
        loss::KERNELS,
        reduce::KERNELS,
        optim::KERNELS,
    ]
    .concat()
}

struct Compiled {
    module: Module,
    info: naga::valid::ModuleInfo,
}

fn compile(shader: Shader) -> Compiled {
    let source = shader.source();
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{shader:?}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{shader:?}: {}", e.emit_to_string(source)));
    Compiled { module, info }
}

/// The globals entry point `index` uses, by binding (group 0 only; others are problems).
fn used_bindings(
    c: &Compiled,
    index: usize,
    problems: &mut Vec<String>,
) -> BTreeMap<u32, Handle<GlobalVariable>> {
    let uses = c.info.get_entry_point(index);
    let mut out = BTreeMap::new();
    for (handle, var) in c.module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            problems.push(format!("uses group {}", binding.group));
        }
        out.insert(binding.binding, handle);
    }
    out
}

/// The Rust name of a WGSL scalar type ("?" for anything else).
fn scalar_name(inner: &TypeInner) -> &'static str {
    use naga::ScalarKind::{Float, Sint, Uint};
    match inner {
        TypeInner::Scalar(naga::Scalar {
            kind: Uint,
            width: 4,
        }) => "u32",
        TypeInner::Scalar(naga::Scalar {
            kind: Sint,
            width: 4,
        }) => "i32",
        TypeInner::Scalar(naga::Scalar {
            kind: Float,
            width: 4,
        }) => "f32",
        _ => "?",
    }
}

/// The problems of the arguments struct `ty` of `module` against the mirror `layout`.
fn args_problems(module: &Module, ty: Handle<naga::Type>, layout: &ArgsLayout) -> Vec<String> {
    let name = module.types[ty].name.as_deref().unwrap_or("?");
    let TypeInner::Struct { members, span } = &module.types[ty].inner else {
        return vec![format!("binding 0 is not a struct")];
    };
    let mut problems = Vec::new();
    if name != layout.wgsl {
        problems.push(format!(
            "binding 0 is `{name}`, the mirror says `{}`",
            layout.wgsl
        ));
    }
    if *span as usize != layout.size {
        problems.push(format!(
            "`{name}` is {span} bytes, {} is {}",
            layout.name, layout.size
        ));
    }
    for m in members {
        let member = m.name.as_deref().unwrap_or("?");
        let size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
        let at = m.offset as usize;
        let field = layout
            .fields
            .iter()
            .find(|f| f.offset <= at && at < f.offset + f.size);
        let wgsl_padding = member.starts_with("_pad");
        let problem = match field {
            None => Some(format!("`{member}` at {at} lies past every field")),
            Some(f) if f.is_padding() && !wgsl_padding => Some(format!(
                "`{member}` at {at} lies in the padding `{}`",
                f.name
            )),
            Some(f) if f.is_padding() => None,
            Some(f) if f.offset != at || f.size != size || !f.wgsl.contains(&member) => {
                Some(format!(
                    "`{member}` ({size} bytes at {at}) against `{}` ({} bytes at {}, WGSL \
                     names {:?})",
                    f.name, f.size, f.offset, f.wgsl
                ))
            }
            Some(f) if f.ty != scalar_name(&module.types[m.ty].inner) => Some(format!(
                "`{member}` is {} in WGSL, `{}` is {}",
                scalar_name(&module.types[m.ty].inner),
                f.name,
                f.ty
            )),
            Some(_) => None,
        };
        problems.extend(problem.map(|p| format!("{}: {p}", layout.name)));
    }
    for f in layout.fields.iter().filter(|f| !f.is_padding()) {
        if !members.iter().any(|m| m.offset as usize == f.offset) {
            problems.push(format!(
                "{}: `{}` at {} has no WGSL member",
                layout.name, f.name, f.offset
            ));
        }
    }
    problems
}

/// The problems of storage binding `binding` (1-based), listed by the kernel as `access`.
fn storage_problems(
    c: &Compiled,
    binding: u32,
    access: Access,
    used: Option<&Handle<GlobalVariable>>,
) -> Option<String> {
    let Some(&handle) = used else {
        // A binding the entry point never touches is a placeholder the launcher fills with
        // any buffer it also binds elsewhere: read-only, so the two never conflict.
        return (access != Access::Read)
            .then(|| format!("binding {binding} is unused but listed as {access:?}"));
    };
    let var = &c.module.global_variables[handle];
    let name = var.name.as_deref().unwrap_or("?");
    let declared = match var.space {
        AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
            Access::ReadWrite
        }
        AddressSpace::Storage { .. } => Access::Read,
        other => return Some(format!("binding {binding} (`{name}`) is {other:?}")),
    };
    (declared != access).then(|| {
        format!("binding {binding} (`{name}`) is {declared:?} in WGSL, {access:?} in the Kernel")
    })
}

/// The problems of `kernel` against its entry point in `c`.
fn kernel_problems(kernel: &Kernel, c: &Compiled) -> Vec<String> {
    let Some(index) = c
        .module
        .entry_points
        .iter()
        .position(|ep| ep.name == kernel.entry)
    else {
        return vec![format!("no entry point `{}`", kernel.entry)];
    };
    let mut problems = Vec::new();
    let used = used_bindings(c, index, &mut problems);
    match used.get(&0).map(|&h| &c.module.global_variables[h]) {
        Some(var) if var.space == AddressSpace::Uniform => {
            problems.extend(args_problems(&c.module, var.ty, &kernel.args));
        }
        Some(var) => problems.push(format!("binding 0 is {:?}, not uniform", var.space)),
        None => problems.push("binding 0 (the arguments) is unused".to_string()),
    }
    for (i, &access) in kernel.bindings.iter().enumerate() {
        let binding = i as u32 + 1;
        problems.extend(storage_problems(c, binding, access, used.get(&binding)));
    }
    let listed = kernel.bindings.len() as u32;
    if listed > 0 && !used.contains_key(&listed) {
        problems.push(format!("the last listed binding {listed} is unused"));
    }
    for b in used.keys().filter(|&&b| b > listed) {
        problems.push(format!("binding {b} is used but not listed"));
    }
    problems
}

#[test]
fn every_kernel_matches_its_wgsl_entry_point() {
    let kernels = registry();
    let mut problems = Vec::new();
    for shader in Shader::ALL {
        let compiled = compile(shader);
        for kernel in kernels.iter().filter(|k| k.shader == shader) {
            for p in kernel_problems(kernel, &compiled) {
                problems.push(format!("{:?} `{}`: {p}", shader, kernel.entry));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_wgsl_entry_point_has_exactly_one_kernel() {
    let kernels = registry();
    let mut problems = Vec::new();
    let mut entries = 0;
    for shader in Shader::ALL {
        for ep in &compile(shader).module.entry_points {
            entries += 1;
            let n = kernels
                .iter()
                .filter(|k| k.shader == shader && k.entry == ep.name)
                .count();
            if n != 1 {
                problems.push(format!("{shader:?} `{}` has {n} kernels", ep.name));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // With each entry point covered once, extra kernels would name no entry point (which the
    // test above reports) or repeat one (counted here).
    assert_eq!(kernels.len(), entries, "kernels against entry points");
}

/// The names of the statics of type `Kernel` declared in Rust source `text` (a `kernels!`
/// invocation declares its statics inside the macro, where this sees none).
fn kernel_statics(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ");
    let mut found = Vec::new();
    for item in code.split("static ").skip(1) {
        let Some((name, rest)) = item.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let ty = rest.split(['=', ';']).next().unwrap_or_default().trim();
        let is_ident = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
        if is_ident && ty.rsplit("::").next() == Some("Kernel") {
            found.push(name.to_string());
        }
    }
    found
}

#[test]
fn every_kernel_static_is_declared_through_the_registry() {
    // A `Kernel` static written by hand would miss its file's `KERNELS` list.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/gpu");
    let mut by_hand = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for name in kernel_statics(&text) {
                by_hand.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(
        by_hand.is_empty(),
        "declare kernels with `kernels!`:\n{}",
        by_hand.join("\n")
    );
    let written = "
        /// Written by hand.
        pub static SUM_AGAIN: crate::engine::gpu::pipelines::Kernel =
            crate::engine::gpu::pipelines::Kernel { shader: Shader::Reduce, ... };
        pub static ANOTHER: Kernel = Kernel { ... };
        pub static KERNELS: &[&Kernel] = &[&A, &B];
        pub static $name: Kernel = Kernel { ... };
    ";
    assert_eq!(kernel_statics(written), ["SUM_AGAIN", "ANOTHER"]);
}

#[test]
fn every_args_mirror_fits_an_arguments_slot() {
    for kernel in registry() {
        let args = &kernel.args;
        assert!(
            args.size as u64 <= ARGS_SLOT,
            "{} is {} bytes",
            args.name,
            args.size
        );
        let end = args.fields.last().map_or(0, |f| f.offset + f.size);
        assert_eq!(end, args.size, "{} ends in implicit padding", args.name);
    }
}

/// The checks above report a mismatch: a WGSL `Args` whose members differ from `DropoutArgs`
/// in order, type and padding, and a `dropout_backward` whose binding differs from the Kernel.
#[test]
fn the_interface_checks_report_mismatches() {
    let wgsl = "
        struct Args { n: u32, src_off: u32, key: u32, dst_off: u32, threshold: f32, scale: f32,
                      step: u32, shared_step: u32, window_off: u32, extra: u32, _pad1: u32,
                      _pad2: u32, }
        @group(0) @binding(0) var<uniform> args: Args;
        @group(0) @binding(1) var<storage, read> b_d: array<f32>;
        @group(0) @binding(2) var<storage, read> more: array<f32>;
        @compute @workgroup_size(1)
        fn dropout_backward() { let x = b_d[args.n] + more[0]; }
    ";
    let module = naga::front::wgsl::parse_str(wgsl).unwrap();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap();
    let problems = kernel_problems(&dropout::DROPOUT_BACKWARD, &Compiled { module, info });
    let text = problems.join("\n");
    for expected in [
        "`key` (4 bytes at 8) against `dst_off`",
        "`dst_off` (4 bytes at 12) against `key`",
        "`threshold` is f32 in WGSL, `threshold` is u32",
        "`extra` at 36 lies in the padding `pad`",
        "binding 1 (`b_d`) is Read in WGSL, ReadWrite in the Kernel",
        "binding 2 is used but not listed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(problems.len(), 6, "{text}");
}
