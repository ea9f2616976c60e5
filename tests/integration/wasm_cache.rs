//! Compiled components are cached in the state directory so a restart does not recompile.

use crate::support::{env_for, load_rule, repo_root, wasm_dir};
use gatehost::model::Message;
use std::path::Path;

fn cached_files(state: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(state.join("cache/wasm")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

#[test]
fn compiled_components_are_cached_reused_and_rebuilt_when_corrupt() {
    wasm_dir();
    let state = tempfile::tempdir().unwrap();
    let manifest = repo_root().join("plugins/dist/iothub-telemetry-wasm.toml");
    let msg = Message::new("plant1/press7/t", "{}", 0);

    let rule = load_rule(env_for(vec![], state.path().to_path_buf(), true), &manifest);
    rule.translate(&msg).unwrap();
    let files = cached_files(state.path());
    assert_eq!(files.len(), 1, "one compiled artifact: {files:?}");
    let first = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // A second load (a restart) uses the artifact instead of writing a new one.
    let rule = load_rule(env_for(vec![], state.path().to_path_buf(), true), &manifest);
    rule.translate(&msg).unwrap();
    assert_eq!(cached_files(state.path()), files);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        first
    );

    // A corrupt artifact is not trusted: the component is recompiled and the cache rewritten.
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let rule = load_rule(env_for(vec![], state.path().to_path_buf(), true), &manifest);
    rule.translate(&msg).unwrap();
    assert!(std::fs::read(&files[0]).unwrap().len() > 1000);
}
