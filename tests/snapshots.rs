//! Snapshot tests as data: every `tests/wat/*.wat` whose first line is a directive
//!
//!     ;; passes: a,b
//!
//! is rewritten with those passes (`none` for none), and the `wasmprinter` text of the output is
//! compared with `snapshots/<file stem>.snap`. A second line `;; options: --flag …` runs the
//! command line with those options too (`--fpcast-design tables`, `--enable-gc`, …). Adding a case is adding a `.wat` file; review new
//! or changed snapshots with `cargo insta review` (or accept them all with
//! `INSTA_UPDATE=always cargo test --test snapshots`) and read them like code.
//!
//! The wasmfix version in `processed-by wasmfix <version>` is printed as `[version]`, so that a
//! version bump does not change every snapshot.

mod common;

const DIRECTIVE: &str = ";; passes:";
const OPTIONS: &str = ";; options:";

/// The passes a `.wat` file asks for, if its first line is a directive.
fn directive(source: &str) -> Option<&str> {
    Some(source.lines().next()?.strip_prefix(DIRECTIVE)?.trim())
}

#[test]
fn wat_snapshots() {
    let mut cases = 0;
    for path in common::wat_files() {
        let source = std::fs::read_to_string(&path).unwrap();
        let Some(passes) = directive(&source) else {
            continue;
        };
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let input = wat::parse_str(&source).unwrap_or_else(|e| panic!("{stem}.wat: {e}"));
        let options = source
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix(OPTIONS))
            .map(str::trim);
        let output = match options {
            None => common::try_rewrite(&input, passes)
                .unwrap_or_else(|e| panic!("{stem}.wat: wasmfix --passes {passes} failed: {e}")),
            Some(options) => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("in.wasm");
                std::fs::write(&path, &input).unwrap();
                let out = common::wasmfix()
                    .arg(&path)
                    .args(["-o", "-", "-q", "--passes", passes])
                    .args(options.split_whitespace())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{stem}.wat: wasmfix --passes {passes} {options} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
        };
        let passes = match options {
            Some(o) => format!("{passes} {o}"),
            None => passes.to_string(),
        };
        common::validate(&output);
        let text = common::print(&output).replace(
            &format!("\"wasmfix\" \"{}\"", env!("CARGO_PKG_VERSION")),
            "\"wasmfix\" \"[version]\"",
        );
        insta::with_settings!({
            snapshot_path => "../snapshots",
            prepend_module_to_snapshot => false,
            description => format!("tests/wat/{stem}.wat after --passes {passes}"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(stem.as_str(), text);
        });
        cases += 1;
    }
    assert!(
        cases > 0,
        "no tests/wat/*.wat file starts with `{DIRECTIVE}`"
    );
}
