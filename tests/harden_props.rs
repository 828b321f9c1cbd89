//! Property test of the `--harden` passes: generated correct programs — a C-like stack above the
//! data, a `.rodata` segment, an allocator under libc's names (`malloc` forwarding to `dlmalloc`,
//! `free`), and a ring of functions with random frame sizes that fill their frames, allocate
//! and fill heap blocks of random sizes up to their last byte, read read-only data and call each
//! other to a random depth — return the same result after heap-canary, bounds and stack-canary,
//! and never trap. Some functions hold the nested frame of an "inlined callee" (as wasm-opt's
//! inliner leaves it), filled up to its last byte, in a loop or not, restored in the ways
//! stack-canary recognizes or in one it must leave alone; each adds to its result how far the
//! stack pointer moved across the nested frame, which must be 0.

use proptest::prelude::*;
use wasmtime::{Engine, Instance, Module, Store};

const STACK_HIGH: u32 = 98304;

#[derive(Debug, Clone)]
struct Case {
    /// The ring of functions.
    functions: Vec<Function>,
    depth: u32,
}

#[derive(Debug, Clone)]
struct Function {
    /// Frame size, a multiple of 16.
    frame: u32,
    /// Heap block size.
    block: u32,
    /// Whether it returns early through `return` inside a block.
    early: bool,
    inlined: Option<Inlined>,
}

/// The nested frame an inliner leaves: `global.get sp; i32.const N; i32.sub; local.tee $ip;
/// global.set sp` … `global.set sp`.
#[derive(Debug, Clone)]
struct Inlined {
    /// N, a multiple of 16.
    size: u32,
    /// How it is restored: 0 `local.get $ip; i32.const N; i32.add`; 1 no frame local, the frame
    /// addressed and restored through `global.get sp`; 2 in both arms of an `if` (not at the
    /// opening's level: stack-canary must leave it alone).
    form: u32,
    /// Opened and restored three times in a loop (a leak would add up).
    in_loop: bool,
    /// Inside it, an early exit of the inlined body: `br_if` to a block around the body.
    early_exit: bool,
    /// A callee inlined into this one, its frame nested inside.
    inner: Option<Box<Inlined>>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let leaf = (1u32..=4, 0u32..3, any::<bool>(), any::<bool>()).prop_map(
        |(u, form, in_loop, early_exit)| Inlined {
            size: u * 16,
            form,
            in_loop,
            early_exit,
            inner: None,
        },
    );
    let inlined = (leaf.clone(), proptest::option::of(leaf)).prop_map(|(mut outer, inner)| {
        outer.inner = inner.map(Box::new);
        outer
    });
    let function = (
        1u32..=16,
        0u32..=100,
        any::<bool>(),
        proptest::option::of(inlined),
    )
        .prop_map(|(u, block, early, inlined)| Function {
            frame: u * 16,
            block,
            early,
            inlined,
        });
    (proptest::collection::vec(function, 1..5), 0u32..24)
        .prop_map(|(functions, depth)| Case { functions, depth })
}

/// The code of an inlined callee's nested frame: fills it with `$d + k` up to its last byte,
/// reads its last byte back into `$s`, and adds to `$s` how far the stack pointer moved from
/// before the frame to after it.
fn inlined_wat(i: &Inlined, level: u32) -> String {
    let size = i.size;
    let inner = i
        .inner
        .as_deref()
        .map_or(String::new(), |n| inlined_wat(n, level + 1));
    let (open_tee, base, restore) = match i.form {
        1 => (
            String::new(),
            "global.get $__stack_pointer".to_string(),
            format!(
                "global.get $__stack_pointer
    i32.const {size}
    i32.add
    global.set $__stack_pointer"
            ),
        ),
        _ => (
            format!("local.tee $ip{level}"),
            format!("local.get $ip{level}"),
            format!(
                "local.get $ip{level}
    i32.const {size}
    i32.add
    global.set $__stack_pointer"
            ),
        ),
    };
    let restore = if i.form == 2 {
        format!(
            "local.get $d
    if
    {restore}
    else
    {restore}
    end"
        )
    } else {
        restore
    };
    let early_exit = if i.early_exit {
        // skip the last store when d is 3
        "local.get $d
    i32.const 3
    i32.eq
    br_if 0"
    } else {
        ""
    };
    let body = format!(
        "global.get $__stack_pointer
    local.set $before{level}
    global.get $__stack_pointer
    i32.const {size}
    i32.sub
    {open_tee}
    global.set $__stack_pointer
    block
    i32.const 0
    local.set $k{level}
    loop
      {base}
      local.get $k{level}
      i32.add
      local.get $d
      local.get $k{level}
      i32.add
      i32.store8
      local.get $k{level}
      i32.const 1
      i32.add
      local.tee $k{level}
      i32.const {size}
      i32.lt_u
      br_if 0
    end
    {early_exit}
    {base}
    local.get $d
    i32.store8 offset={last}
    end
    {inner}
    local.get $s
    {base}
    i32.load8_u offset={last}
    i32.add
    local.set $s
    {restore}
    local.get $s
    global.get $__stack_pointer
    local.get $before{level}
    i32.sub
    i32.add
    local.set $s",
        last = size - 1
    );
    if i.in_loop {
        format!(
            "i32.const 3
    local.set $n{level}
    loop
    {body}
    local.get $n{level}
    i32.const 1
    i32.sub
    local.tee $n{level}
    br_if 0
    end"
        )
    } else {
        body
    }
}

fn module_wat(case: &Case) -> String {
    let n = case.functions.len();
    let mut w = format!(
        r#"(module
  (memory 4)
  (global $__stack_pointer (mut i32) (i32.const {STACK_HIGH}))
  (global $heap (mut i32) (i32.const 131072))
  (data $.rodata (i32.const 1024) "\01\02\03\04\05\06\07\08\09\0a\0b\0c\0d\0e\0f\10")
  (data $.data (i32.const 1040) "\2a\00\00\00")
  ;; a bump allocator; blocks are 16-aligned
  (func $dlmalloc (param $n i32) (result i32) (local $p i32)
    global.get $heap
    local.tee $p
    local.get $n
    i32.const 15
    i32.add
    i32.const -16
    i32.and
    i32.add
    global.set $heap
    local.get $p)
  (func $malloc (export "malloc") (param i32) (result i32)
    local.get 0
    call $dlmalloc)
  (func $free (export "free") (param i32))
  (func (export "run") (param i32) (result i32)
    local.get 0
    call $f0
    i32.const 1040
    i32.load
    i32.add)
"#
    );
    for (i, f) in case.functions.iter().enumerate() {
        let (frame, block, early) = (f.frame, f.block, f.early);
        let inlined = f
            .inlined
            .as_ref()
            .map_or(String::new(), |i| inlined_wat(i, 0));
        let next = (i + 1) % n;
        let early_return = if early {
            // return early when d is 1: the value is the block's first byte
            format!(
                "block
    local.get $d
    i32.const 1
    i32.ne
    br_if 0
    local.get $b
    call $free
    local.get $fp
    i32.const {frame}
    i32.add
    global.set $__stack_pointer
    local.get $s
    return
  end"
            )
        } else {
            String::new()
        };
        w += &format!(
            r#"(func $f{i} (param $d i32) (result i32) (local $fp i32) (local $b i32) (local $k i32) (local $s i32) (local $ip0 i32) (local $before0 i32) (local $n0 i32) (local $k0 i32) (local $ip1 i32) (local $before1 i32) (local $n1 i32) (local $k1 i32)
  global.get $__stack_pointer
  i32.const {frame}
  i32.sub
  local.tee $fp
  global.set $__stack_pointer
  ;; fill the frame up to its last word
  i32.const 0
  local.set $k
  loop
    local.get $fp
    local.get $k
    i32.add
    local.get $d
    local.get $k
    i32.add
    i32.store
    local.get $k
    i32.const 4
    i32.add
    local.tee $k
    i32.const {frame}
    i32.lt_u
    br_if 0
  end
  ;; a heap block of {block} bytes, filled up to its last byte
  i32.const {block}
  call $malloc
  local.set $b
  i32.const 0
  local.set $k
  block
    loop
      local.get $k
      i32.const {block}
      i32.ge_u
      br_if 1
      local.get $b
      local.get $k
      i32.add
      local.get $k
      local.get $d
      i32.add
      i32.store8
      local.get $k
      i32.const 1
      i32.add
      local.set $k
      br 0
    end
  end
  ;; read-only data
  local.get $d
  i32.const 15
  i32.and
  i32.const 1024
  i32.add
  i32.load8_u
  local.set $s
  {inlined}
  {early_return}
  local.get $d
  if
    local.get $d
    i32.const 1
    i32.sub
    call $f{next}
    local.get $s
    i32.add
    local.set $s
  end
  ;; read back the frame's last word and the block's last byte
  local.get $s
  local.get $fp
  i32.load offset={last_word}
  i32.add
  local.set $s
  i32.const {block}
  if
    local.get $s
    local.get $b
    i32.load8_u offset={last_byte}
    i32.add
    local.set $s
  end
  local.get $b
  call $free
  local.get $fp
  i32.const {frame}
  i32.add
  global.set $__stack_pointer
  local.get $s)
"#,
            last_word = frame - 4,
            last_byte = block.saturating_sub(1),
        );
    }
    w + ")\n"
}

fn run(wasm: &[u8], depth: u32) -> Result<i32, String> {
    let engine = Engine::default();
    let module = Module::new(&engine, wasm).map_err(|e| format!("{e:?}"))?;
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).map_err(|e| format!("{e:?}"))?;
    let f = instance
        .get_typed_func::<i32, i32>(&mut store, "run")
        .unwrap();
    f.call(&mut store, depth as i32)
        .map_err(|e| format!("{e:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn hardened_correct_programs_keep_their_results(case in case_strategy()) {
        let wasm = wat::parse_str(module_wat(&case)).unwrap();
        let passes: Vec<_> = ["heap-canary", "bounds", "stack-canary"]
            .iter()
            .map(|n| wasmfix::passes::find(n).unwrap())
            .collect();
        let out = wasmfix::pipeline::run(&wasm, &passes, &Default::default())
            .map_err(|f| TestCaseError::fail(f.to_string()))?;
        // Every pass did something: the allocator was wrapped, accesses and frames checked.
        for r in &out.reports {
            prop_assert!(!r.summary.starts_with("nothing") && !r.summary.starts_with("not applied"), "{}", r.summary);
        }
        // Nested frames restored at their own level are protected; the others are left alone.
        let canary = out.reports.iter().find(|r| r.pass == "stack-canary").unwrap();
        let inlined: Vec<&Inlined> = case
            .functions
            .iter()
            .filter_map(|f| f.inlined.as_ref())
            .flat_map(|i| std::iter::once(i).chain(i.inner.as_deref()))
            .collect();
        // An uncertain frame makes the frames around it uncertain too.
        let certain = case
            .functions
            .iter()
            .filter_map(|f| f.inlined.as_ref())
            .map(|i| match i.inner.as_deref() {
                _ if i.form == 2 => usize::from(i.inner.as_ref().is_some_and(|n| n.form != 2)),
                Some(n) if n.form == 2 => 0,
                Some(_) => 2,
                None => 1,
            })
            .sum::<usize>();
        prop_assert_eq!(&canary.details["nested_frames"], certain, "{}", canary.summary);
        prop_assert_eq!(&canary.details["nested_frames_left_alone"], inlined.len() - certain);
        let before = run(&wasm, case.depth);
        prop_assert!(before.is_ok(), "the generated program is correct: {:?}", before);
        prop_assert_eq!(before, run(&out.bytes, case.depth));
    }
}
