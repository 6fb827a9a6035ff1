//! Every WGSL file parses and validates with naga, and every entry point still validates once
//! its override constants take their defaults: shader errors surface without a GPU.

use unroll::engine::gpu::shaders::Shader;

fn validate(shader: Shader) {
    let file = shader.file();
    let module = naga::front::wgsl::parse_str(shader.source())
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(shader.source())));
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    );
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(shader.source())));
    assert!(!module.entry_points.is_empty(), "{file} has no entry point");
    for ep in &module.entry_points {
        assert_eq!(ep.stage, naga::ShaderStage::Compute, "{file}: {}", ep.name);
        naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((ep.stage, &ep.name)),
            &naga::back::PipelineConstants::default(),
        )
        .unwrap_or_else(|e| panic!("{file}: {} with default overrides: {e}", ep.name));
    }
}

#[test]
fn every_wgsl_file_parses_and_validates_with_naga() {
    for shader in Shader::ALL {
        validate(shader);
    }
}

#[test]
fn every_shader_file_is_known_to_the_engine() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = Shader::ALL
        .iter()
        .flat_map(|s| s.files().iter().map(|f| f.to_string()))
        .collect();
    known.sort();
    known.dedup();
    assert_eq!(on_disk, known);
}

#[test]
fn every_shader_source_is_its_files_in_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for shader in Shader::ALL {
        let files = shader.files();
        assert_eq!(files.last(), Some(&shader.file()), "{shader:?}");
        let joined: String = files
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
            .collect();
        assert!(joined == shader.source(), "{shader:?} is not {files:?}");
    }
}
