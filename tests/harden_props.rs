//! Property test of the `--harden` passes: generated correct programs — a C-like stack above the
//! data, a `.rodata` segment, an allocator under libc's names (`malloc` forwarding to `dlmalloc`,
//! `free`), and a ring of functions with random frame sizes that fill their frames, allocate
//! and fill heap blocks of random sizes up to their last byte, read read-only data and call each
//! other to a random depth — return the same result after heap-canary, bounds and stack-canary,
//! and never trap.

use proptest::prelude::*;
use wasmtime::{Engine, Instance, Module, Store};

const STACK_HIGH: u32 = 98304;

#[derive(Debug, Clone)]
struct Case {
    /// Per function in the ring: frame size (multiple of 16), heap block size, whether it
    /// returns early through `return` inside a block.
    functions: Vec<(u32, u32, bool)>,
    depth: u32,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let function = (1u32..=16, 0u32..=100, any::<bool>()).prop_map(|(u, n, r)| (u * 16, n, r));
    (proptest::collection::vec(function, 1..5), 0u32..24)
        .prop_map(|(functions, depth)| Case { functions, depth })
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
    for (i, &(frame, block, early)) in case.functions.iter().enumerate() {
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
            r#"(func $f{i} (param $d i32) (result i32) (local $fp i32) (local $b i32) (local $k i32) (local $s i32)
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
        let before = run(&wasm, case.depth);
        prop_assert!(before.is_ok(), "the generated program is correct: {:?}", before);
        prop_assert_eq!(before, run(&out.bytes, case.depth));
    }
}
