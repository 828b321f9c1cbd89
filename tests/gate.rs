//! A Makefile runs `wasmfix app.wasm -o app.wasm` on every build and gates on `--check`: a fixed
//! module has no hazards left, and fixing it again changes nothing.

mod common;

#[test]
fn check_passes_after_fixing_and_fixing_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "fpcast.O2.wasm",
        "stack.O2.wasm",
        "stack.O2.relocs.wasm",
        "stack.O2.stripped.wasm",
    ] {
        let app = dir.path().join(name);
        std::fs::copy(common::repo().join("tests/fixtures/wasm").join(name), &app).unwrap();
        let check = |path: &std::path::Path| {
            common::wasmfix()
                .arg("--check")
                .arg("-q")
                .arg(path)
                .status()
                .unwrap()
                .code()
        };
        assert_eq!(check(&app), Some(1), "{name} has hazards before");
        let fix = || {
            common::wasmfix()
                .arg(&app)
                .arg("-o")
                .arg(&app)
                .status()
                .unwrap()
        };
        assert!(fix().success());
        let once = std::fs::read(&app).unwrap();
        assert_eq!(check(&app), Some(0), "{name} has no hazards after");
        assert!(fix().success());
        assert_eq!(
            std::fs::read(&app).unwrap(),
            once,
            "{name}: a second run changes nothing"
        );
    }
}
