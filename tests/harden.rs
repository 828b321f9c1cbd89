//! `--harden` on the C fixtures (tests/fixtures/c/harden.c), every build: each memory bug that
//! the original runs silently (exit 0, wrong output) stops with its message, a trap and no
//! wrong output; each correct program prints exactly what the original prints.

mod common;

use common::{Outcome, Run, fixture, run_wasi};

const VARIANTS: &[&str] = &["O0", "O2", "O0.wasmopt", "O2.wasmopt", "O2.stripped"];

/// The fixture build `variant` rewritten by the `--harden` pipeline.
fn hardened(variant: &str) -> (Vec<u8>, Vec<u8>, Vec<wasmfix::passes::PassReport>) {
    let original = fixture(&format!("harden.{variant}.wasm"));
    let passes: Vec<_> = wasmfix::passes::harden_pipeline()
        .into_iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    let out = wasmfix::pipeline::run(&original, &passes, &options)
        .unwrap_or_else(|f| panic!("{variant}: --harden failed: {f}"));
    (original, out.bytes, out.reports)
}

/// Only `pass` over the build `variant`.
fn only(variant: &str, pass: &str) -> Vec<u8> {
    common::rewrite(&fixture(&format!("harden.{variant}.wasm")), pass)
}

fn long_name() -> String {
    "A".repeat(48)
}

/// A run that stopped: trapped, printed nothing on stdout, and `message` on stderr.
fn assert_stopped(run: &Run, message: &str, what: &str) {
    assert!(
        matches!(run.outcome, Outcome::Trap(_)),
        "{what}: should trap: {run:?}"
    );
    assert!(run.stdout.is_empty(), "{what}: wrong output: {run:?}");
    assert!(
        run.stderr.starts_with(message),
        "{what}: expected `{message}…` on stderr: {run:?}"
    );
}

#[test]
fn correct_programs_behave_identically() {
    for variant in VARIANTS {
        let (original, fixed, _) = hardened(variant);
        for args in [
            &["sort", "3000"][..],
            &["hash", "3000"],
            &["recurse", "300"],
            &["aligned"],
            &["login", "bob"],
            &["login", "admin"],
            &["heap", "16"],
        ] {
            let before = run_wasi(&original, args);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} {args:?}");
            assert_eq!(before, run_wasi(&fixed, args), "{variant} {args:?}");
        }
    }
}

#[test]
fn stack_buffer_overflow_stops_in_the_overflowing_function() {
    let name = long_name();
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["login", &name]);
        assert_eq!(before.outcome, Outcome::Exit(0), "{variant}");
        assert_eq!(
            before.stdout, "ACCESS GRANTED\n",
            "{variant}: the wrong decision"
        );
        // Without names the function is reported by its index.
        let function = if *variant == "O2.stripped" {
            "function "
        } else {
            "check_user"
        };
        let message = format!("wasmfix: stack buffer overflow in {function}");
        for (what, fixed) in [
            ("--harden", hardened(variant).1),
            ("stack-canary", only(variant, "stack-canary")),
        ] {
            let after = run_wasi(&fixed, &["login", &name]);
            assert_stopped(&after, &message, &format!("{variant} {what}"));
        }
    }
}

/// A frame overrun that stays inside the frame (a shorter name) is not the canary's business:
/// the program is unchanged, whatever it does.
#[test]
fn overruns_inside_the_frame_do_not_trip_the_canary() {
    for variant in ["O2", "O2.wasmopt"] {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let fixed = only(variant, "stack-canary");
        let args = ["login", "AAAAAAAAAAAAAAA"];
        assert_eq!(run_wasi(&original, &args), run_wasi(&fixed, &args));
    }
}

#[test]
fn a_second_run_changes_nothing() {
    let (_, fixed, _) = hardened("O2");
    let passes: Vec<_> = wasmfix::passes::harden_pipeline()
        .into_iter()
        .map(|n| wasmfix::passes::find(n).unwrap())
        .collect();
    let options = wasmfix::passes::PassOptions {
        harden: true,
        ..Default::default()
    };
    let again = wasmfix::pipeline::run(&fixed, &passes, &options).unwrap();
    assert_eq!(again.rewritten_functions, 0);
    for r in &again.reports {
        if wasmfix::passes::HARDEN_PASSES.contains(&r.pass) {
            assert!(r.summary.contains("already applied"), "{}", r.summary);
        }
    }
}

#[test]
fn heap_overflows_stop_at_free_with_the_block_size() {
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        // 28 bytes stay inside the allocator's slack: only a redzone at the exact size sees them.
        for n in ["28", "32", "48"] {
            let before = run_wasi(&original, &["heap", n]);
            assert_eq!(before.outcome, Outcome::Exit(0), "{variant} heap {n}");
            assert_eq!(before.stdout, "heap ok\n", "{variant} heap {n}");
            for (what, fixed) in [
                ("--harden", hardened(variant).1),
                ("heap-canary", only(variant, "heap-canary")),
            ] {
                let after = run_wasi(&fixed, &["heap", n]);
                assert_stopped(
                    &after,
                    "wasmfix: heap buffer overflow: block of 16 bytes at 0x",
                    &format!("{variant} {what} heap {n}"),
                );
                assert!(
                    after.stderr.contains(" written past its end\n"),
                    "{after:?}"
                );
            }
        }
    }
}

#[test]
fn double_free_is_reported() {
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["doublefree"]);
        assert_eq!(before.stdout, "double free accepted\n", "{variant}");
        let after = run_wasi(&hardened(variant).1, &["doublefree"]);
        assert_stopped(&after, "wasmfix: double free of block at 0x", variant);
    }
}

/// Without a name section the allocator is found by its code: dlmalloc's request
/// normalization and its free's shared state (see `src/allocator.rs`).
#[test]
fn stripped_modules_get_heap_canary_from_the_allocators_code() {
    let out = wasmfix::pipeline::run(
        &fixture("harden.O2.stripped.wasm"),
        &common::passes("heap-canary"),
        &Default::default(),
    )
    .unwrap();
    let summary = &out.reports[0].summary;
    assert!(
        summary.contains("wrapped dlmalloc malloc function ") && summary.contains("free function "),
        "{summary}"
    );
    let evidence = out.reports[0].details["evidence"].to_string();
    assert!(
        evidence.contains("normalizes requests like dlmalloc"),
        "{evidence}"
    );
}

/// An allocator wasmfix does not recognize by its code (zig 0.15+'s own malloc, which it finds by
/// its names when they are kept: tests/heap.rs), stripped: `heap-canary`
/// alone refuses with the reason (exit 2, nothing written), `--harden` warns and applies the
/// other passes.
#[test]
fn unrecognized_allocators_are_refused_by_heap_canary_and_warned_about_by_harden() {
    let stderr = common::heap_canary_refusal("uaf.zig.O2.stripped.wasm");
    assert!(
        stderr.contains("heap-canary: cannot find `malloc`")
            && stderr.contains("not an allocator wasmfix recognizes")
            && stderr.contains("--malloc"),
        "{stderr}"
    );
    let path = common::repo().join("tests/fixtures/wasm/uaf.zig.O2.stripped.wasm");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wasm");
    let hardened = common::wasmfix()
        .arg(&path)
        .args(["--harden", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(hardened.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&hardened.stderr);
    assert!(
        stderr.contains("heap-canary: warning: heap blocks are not checked: cannot find `malloc`"),
        "{stderr}"
    );
    let fixed = std::fs::read(&out).unwrap();
    let after = run_wasi(&fixed, &["write"]);
    assert_eq!(
        after.stdout, "write after free accepted (4950)\n",
        "not checked, as the warning says"
    );
}

#[test]
fn null_writes_and_literal_writes_stop_at_the_access() {
    for variant in VARIANTS {
        let original = fixture(&format!("harden.{variant}.wasm"));
        let before = run_wasi(&original, &["null"]);
        assert_eq!(
            before.stdout, "wrote through null, read back 42\n",
            "{variant}"
        );
        let before = run_wasi(&original, &["literal"]);
        assert_eq!(before.stdout, "Jello\n", "{variant}");
        for (what, fixed) in [
            ("--harden", hardened(variant).1),
            ("bounds", only(variant, "bounds")),
        ] {
            let after = run_wasi(&fixed, &["null"]);
            assert_stopped(
                &after,
                "wasmfix: null pointer dereference at address 0x8 in ",
                &format!("{variant} {what} null"),
            );
            let after = run_wasi(&fixed, &["literal"]);
            if *variant == "O2.stripped" {
                // No data segment names: read-only data is unknown and not checked.
                assert_eq!(after.stdout, "Jello\n", "{variant} {what}");
            } else {
                assert_stopped(
                    &after,
                    "wasmfix: write to read-only data at address 0x",
                    &format!("{variant} {what} literal"),
                );
            }
        }
    }
}

#[test]
fn bounds_says_what_it_cannot_check() {
    let out = wasmfix::pipeline::run(
        &fixture("harden.O2.stripped.wasm"),
        &common::passes("bounds"),
        &Default::default(),
    )
    .unwrap();
    assert!(
        out.reports[0]
            .summary
            .contains("read-only data not checked: no name section"),
        "{}",
        out.reports[0].summary
    );
    // A stack-first module has no null page, and without names nothing is left to check.
    let out = wasmfix::pipeline::run(
        &fixture("layout.stackfirst.wasm"),
        &common::passes("bounds"),
        &Default::default(),
    )
    .unwrap();
    assert!(
        out.reports[0]
            .summary
            .contains("no null page: the stack lies at address 0"),
        "{}",
        out.reports[0].summary
    );
}

/// A module whose heap was recorded by a memory snapshot (Wizer, as ruby.wasm is): the
/// blocks its initializer allocated lie in the data past `__heap_base` and have no header.
/// `case` is the body of `_start`, which exits with 0 when the allocator saw what it should.
fn snapshot_module(case: &str) -> Vec<u8> {
    // The block at 1040 (its allocator chunk at 1024) holds "hello", as the snapshot left it.
    let mut data = "\\00".repeat(16);
    data.push_str("hello");
    data.push_str(&"\\00".repeat(300));
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global $heap_base (export "__heap_base") i32 (i32.const 1024))
          (global $top (mut i32) (i32.const 2048))
          ;; one free chunk, handed out again by the next malloc: the real allocator also
          ;; reuses freed snapshot memory
          (global $reuse (mut i32) (i32.const 0))
          (func $malloc (export "malloc") (param $n i32) (result i32) (local $p i32)
            global.get $reuse
            if
              global.get $reuse
              i32.const 0
              global.set $reuse
              return
            end
            global.get $top
            local.tee $p
            local.get $n
            i32.const 15
            i32.add
            i32.const -16
            i32.and
            i32.add
            global.set $top
            local.get $p)
          (func $free (export "free") (param $p i32)
            local.get $p
            global.set $reuse)
          (func $realloc (export "realloc") (param $q i32) (param $n i32) (result i32)
            (local $p i32)
            local.get $n
            call $malloc
            local.tee $p
            local.get $q
            local.get $n
            memory.copy
            local.get $q
            call $free
            local.get $p)
          (func (export "_start") (local $p i32)
            {case})
          (data (i32.const 1024) "{data}"))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn snapshot_blocks_pass_through_and_reused_snapshot_memory_is_still_checked() {
    // (case, what the rewritten module must do: None = exit 0 like the original, Some(message))
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "free of a snapshot block reaches the real free with its address",
            "i32.const 1040  call $free
             global.get $reuse  i32.const 1040  i32.ne  call $exit",
            None,
        ),
        (
            "realloc of a snapshot block copies its contents and frees it",
            "i32.const 1040  i32.const 8  call $realloc  local.tee $p
             i32.load  i32.const 0x6c6c6568  i32.ne
             global.get $reuse  i32.const 1040  i32.ne  i32.or
             local.get $p  i32.eqz  i32.or  call $exit",
            None,
        ),
        (
            "a wrapped block placed in freed snapshot memory is freed normally",
            "i32.const 1040  call $free
             i32.const 16  call $malloc  local.tee $p
             i32.const 7  i32.store offset=12
             local.get $p  call $free
             local.get $p  i32.const 1324  i32.ge_u  call $exit",
            None,
        ),
        (
            "an overflow of a wrapped block in freed snapshot memory is caught",
            "i32.const 1040  call $free
             i32.const 16  call $malloc  local.tee $p
             i32.const 7  i32.store offset=16
             local.get $p  call $free
             local.get $p  i32.const 1324  i32.ge_u  call $exit",
            Some("wasmfix: heap buffer overflow: block of 16 bytes at 0x"),
        ),
        (
            "a free of static data below __heap_base is still reported",
            "i32.const 512  call $free  i32.const 0  call $exit",
            Some("wasmfix: heap buffer overflow or invalid free: the header of block 0x200 "),
        ),
    ];
    for (what, case, expected) in cases {
        let original = snapshot_module(case);
        let before = run_wasi(&original, &[]);
        assert_eq!(
            before.outcome,
            Outcome::Exit(0),
            "{what}: original {before:?}"
        );
        let after = run_wasi(&common::rewrite(&original, "heap-canary"), &[]);
        match expected {
            None => assert_eq!(after, before, "{what}"),
            Some(message) => assert_stopped(&after, message, what),
        }
    }
}

/// A module with `__global_base` = 1024 and "hello" at 1024 whose `_start` loads the `i32` at
/// `p + o` (p from a mutable global, so not a constant) and exits with 0 when it reads "hell".
/// `$twice` loads through the same base at offsets 0 and 4 (the second is covered by the
/// first's check).
fn load_module(p: u32, o: u32) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global (export "__global_base") i32 (i32.const 1024))
          (global $p (mut i32) (i32.const {p}))
          (func $read (param $p i32) (result i32)
            local.get $p
            i32.load offset={o})
          (func $twice (param $p i32) (result i32)
            local.get $p
            i32.load offset={o}
            local.get $p
            i32.load offset={o4}
            i32.xor)
          (func (export "_start")
            global.get $p  call $read  i32.const 0x6c6c6568  i32.ne
            global.get $p  call $twice  i32.const 0x6c6c6568  i32.const 0x6f  i32.xor  i32.ne
            i32.or  call $exit)
          (data (i32.const 1024) "hello\00\00\00"))"#,
        o4 = o + 4
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Accesses at the edges of a 1024-byte null page: (p, o, whether p + o is in it).
const NULL_PAGE_EDGES: &[(u32, u32, bool)] = &[
    (1024, 0, false),
    (1020, 4, false),
    (4, 1020, false),
    (0, 1024, false),
    (8, 0, true),
    (1020, 0, true),
    (3, 1020, true),
    (0, 0, true),
];

/// Stop mode rebases a load from the null page so that it traps at the access as an
/// out-of-bounds access (no message); `--bounds-precise` stops it with the message. Loads that
/// are not in the null page read what they read before, at the edges of the page too.
#[test]
fn null_page_loads_trap_at_the_access() {
    let precise = wasmfix::passes::PassOptions {
        bounds_precise: true,
        ..Default::default()
    };
    let bounds = common::passes("bounds");
    for &(p, o, null) in NULL_PAGE_EDGES {
        let what = format!("load at {p} offset {o}");
        let original = load_module(p, o);
        let before = run_wasi(&original, &[]);
        let fast = wasmfix::pipeline::run(&original, &bounds, &Default::default()).unwrap();
        let slow = wasmfix::pipeline::run(&original, &bounds, &precise).unwrap();
        assert_ne!(fast.bytes, original, "{what}: nothing checked");
        let (fast, slow) = (run_wasi(&fast.bytes, &[]), run_wasi(&slow.bytes, &[]));
        if null {
            assert_eq!(
                before.outcome,
                Outcome::Exit(1),
                "{what}: original {before:?}"
            );
            assert!(
                fast.outcome.is_trap("out of bounds") && fast.stderr.is_empty(),
                "{what}: {fast:?}"
            );
            assert_stopped(
                &slow,
                &format!(
                    "wasmfix: null pointer dereference at address {:#x} in ",
                    p + o
                ),
                &what,
            );
        } else {
            assert_eq!(
                before.outcome,
                Outcome::Exit(0),
                "{what}: original {before:?}"
            );
            assert_eq!(fast, before, "{what}");
            assert_eq!(slow, before, "{what}");
        }
    }
    // An address past 4 GiB traps as before.
    let original = load_module(u32::MAX - 2, 4);
    let before = run_wasi(&original, &[]);
    assert!(before.outcome.is_trap("out of bounds"), "{before:?}");
    let fast = wasmfix::pipeline::run(&original, &bounds, &Default::default()).unwrap();
    assert!(run_wasi(&fast.bytes, &[]).outcome.is_trap("out of bounds"));
}

/// Like [`load_module`] for stores: `_start` stores 0x01020304 at `p + o` (the value held
/// back behind the check: `local.get`) and 0x01020305 at `p + o + 4` (a computed value, saved
/// in a local), then exits with 0 when both words read back as stored.
fn store_module(p: u32, o: u32) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global (export "__global_base") i32 (i32.const 1024))
          (global $p (mut i32) (i32.const {p}))
          (func $write (param $p i32) (param $v i32)
            local.get $p
            local.get $v
            i32.store offset={o})
          (func $write_next (param $p i32) (param $v i32)
            local.get $p
            local.get $v
            i32.const 1
            i32.add
            i32.store offset={o4})
          (func (export "_start")
            global.get $p  i32.const 0x01020304  call $write
            global.get $p  i32.const 0x01020304  call $write_next
            global.get $p  i32.load offset={o}  i32.const 0x01020304  i32.ne
            global.get $p  i32.load offset={o4}  i32.const 0x01020305  i32.ne
            i32.or  call $exit)
          (data (i32.const 1024) "hello\00\00\00"))"#,
        o4 = o + 4
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `--bounds-compact` rebases stores as loads are: a store into the null page traps at the
/// access as an out-of-bounds access (no message, nothing written), where the default stops
/// it with the message; every other store writes what it wrote before, at the edges of the
/// page too.
#[test]
fn bounds_compact_stores_trap_at_the_access() {
    let compact = wasmfix::passes::PassOptions {
        bounds_compact: true,
        ..Default::default()
    };
    let bounds = common::passes("bounds");
    for &(p, o, null) in NULL_PAGE_EDGES {
        let what = format!("store at {p} offset {o}");
        let original = store_module(p, o);
        let before = run_wasi(&original, &[]);
        assert_eq!(
            before.outcome,
            Outcome::Exit(0),
            "{what}: original {before:?}"
        );
        let default = wasmfix::pipeline::run(&original, &bounds, &Default::default()).unwrap();
        let small = wasmfix::pipeline::run(&original, &bounds, &compact).unwrap();
        // (Offsets from 1024 on are provably past the null page: nothing to check.)
        assert!(
            o >= 1024 || small.bytes.len() < default.bytes.len(),
            "{what}: --bounds-compact is not smaller"
        );
        let (default, small) = (run_wasi(&default.bytes, &[]), run_wasi(&small.bytes, &[]));
        if null {
            assert!(
                small.outcome.is_trap("out of bounds") && small.stderr.is_empty(),
                "{what}: {small:?}"
            );
            assert_stopped(
                &default,
                &format!(
                    "wasmfix: null pointer dereference at address {:#x} in ",
                    p + o
                ),
                &what,
            );
        } else {
            assert_eq!(small, before, "{what}");
            assert_eq!(default, before, "{what}");
        }
    }
    // An address past 4 GiB traps as before.
    let original = store_module(u32::MAX - 2, 4);
    let before = run_wasi(&original, &[]);
    assert!(before.outcome.is_trap("out of bounds"), "{before:?}");
    let small = wasmfix::pipeline::run(&original, &bounds, &compact).unwrap();
    assert!(run_wasi(&small.bytes, &[]).outcome.is_trap("out of bounds"));
}
