//! Property test of stack-guard: generated modules with a C-like stack placed after the data
//! (a `__stack_pointer` global, a data word just below the stack) and a ring of functions with
//! random frame sizes that call each other to a random depth, storing into their frames. Some
//! functions free their frame by re-reading the stack pointer instead of restoring the saved
//! one, which the guard cannot prove safe: they are checked twice, through a trap block.
//! Whenever the original stays inside its stack, the guarded module returns the same results;
//! whenever it would have run below the stack, the guarded module traps instead.

use proptest::prelude::*;
use wasmtime::{Engine, Instance, Module, Store};

/// The stack sits in the middle of the one-page memory, so an overflow of up to 32 KiB runs
/// silently over the data below it instead of trapping at address 0.
const STACK_LOW: u32 = 32768;
const STACK_HIGH: u32 = 32768 + 16384;

#[derive(Debug, Clone)]
struct Case {
    /// Frame size of each function in the ring (multiples of 16, as clang aligns them).
    frames: Vec<u32>,
    /// Whether each function frees its frame with `global.get sp; i32.const n; i32.add`.
    reload: Vec<bool>,
    depth: u32,
    /// The frame of `run` itself, chosen in most cases so that the deepest point lands within
    /// a few bytes of the stack's low end, on either side: an off-by-a-few check fails there.
    pad: u32,
}

impl Case {
    /// The deepest the stack goes: `run`'s frame and the frames of the first depth+1 calls
    /// around the ring.
    fn used(&self) -> u32 {
        let ring: u32 = (0..=self.depth)
            .map(|k| self.frames[k as usize % self.frames.len()])
            .sum();
        self.pad + ring
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    // Now and then a frame larger than the stack's low end: its subtraction needs the full
    // range check, not just `sp >= low`.
    let unit = prop_oneof![12 => 1u32..=160, 1 => Just(STACK_LOW / 16 + 100)];
    let function = (unit, any::<bool>());
    let delta = prop_oneof![Just(None), (-2i32..=2).prop_map(Some)];
    (proptest::collection::vec(function, 1..5), 0u32..48, delta).prop_map(
        |(functions, depth, delta)| {
            let mut case = Case {
                frames: functions.iter().map(|(u, _)| u * 16).collect(),
                reload: functions.iter().map(|(_, r)| *r).collect(),
                depth,
                pad: 0,
            };
            if let Some(delta) = delta {
                let target = (STACK_HIGH - STACK_LOW) as i32 + 16 * delta;
                case.pad = (target - case.used() as i32).max(0) as u32;
            }
            case
        },
    )
}

/// `f_i(d)`: pushes a frame, fills it, stores `d` at its bottom, calls `f_{i+1}(d-1)` while `d > 0`, and
/// returns the sum of the stored values seen on the way back, plus the victim word.
fn module_wat(case: &Case) -> String {
    let n = case.frames.len();
    let mut w = format!(
        "(module
  (memory 1)
  (global $__stack_pointer (mut i32) (i32.const {STACK_HIGH}))
  ;; the victim: a data word right below the stack
  (data (i32.const {}) \"\\2a\\00\\00\\00\")
  (func (export \"victim\") (result i32) i32.const {} i32.load)
  (func (export \"run\") (param i32) (result i32) (local $fp i32) (local $r i32)
    global.get $__stack_pointer
    i32.const {pad}
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    local.get $fp
    i32.const 171
    i32.const {pad}
    memory.fill
    local.get 0
    call $f0
    local.set $r
    local.get $fp
    i32.const {pad}
    i32.add
    global.set $__stack_pointer
    local.get $r)
",
        STACK_LOW - 4,
        STACK_LOW - 4,
        pad = case.pad,
    );
    for (i, frame) in case.frames.iter().enumerate() {
        let next = (i + 1) % n;
        let frame_base = if case.reload[i] {
            "global.get $__stack_pointer"
        } else {
            "local.get $fp"
        };
        w += &format!(
            "(func $f{i} (param $d i32) (result i32) (local $fp i32) (local $r i32)
  global.get $__stack_pointer
  i32.const {frame}
  i32.sub
  local.tee $fp
  global.set $__stack_pointer
  ;; fill the whole frame, as a zeroed local buffer does
  local.get $fp
  i32.const 171
  i32.const {frame}
  memory.fill
  local.get $fp
  local.get $d
  i32.store
  local.get $d
  if
    local.get $d
    i32.const 1
    i32.sub
    call $f{next}
    local.set $r
  end
  local.get $fp
  i32.load
  local.get $r
  i32.add
  {frame_base}
  i32.const {frame}
  i32.add
  global.set $__stack_pointer)
"
        );
    }
    w + ")\n"
}

fn run(wasm: &[u8], depth: u32) -> Result<(i32, i32), String> {
    let engine = Engine::default();
    let module = Module::new(&engine, wasm).map_err(|e| format!("{e:?}"))?;
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).map_err(|e| format!("{e:?}"))?;
    let f = instance
        .get_typed_func::<i32, i32>(&mut store, "run")
        .unwrap();
    let victim = instance
        .get_typed_func::<(), i32>(&mut store, "victim")
        .unwrap();
    let r = f
        .call(&mut store, depth as i32)
        .map_err(|e| format!("{e:?}"))?;
    Ok((r, victim.call(&mut store, ()).unwrap()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn guarded_stacks_match_whenever_the_original_stayed_inside(case in case_strategy()) {
        let wasm = wat::parse_str(module_wat(&case)).unwrap();
        let guarded = wasmfix::pipeline::run(&wasm, &[wasmfix::passes::find("stack").unwrap()], &Default::default())
            .map_err(|f| TestCaseError::fail(f.to_string()))?
            .bytes;
        let used = case.used();
        let before = run(&wasm, case.depth);
        let after = run(&guarded, case.depth);
        if used <= STACK_HIGH - STACK_LOW {
            prop_assert_eq!(&before, &after);
            prop_assert_eq!(before.map(|(_, v)| v), Ok(42), "victim intact");
        } else {
            let corrupted = !matches!(before, Ok((_, 42)));
            prop_assert!(corrupted, "used {} bytes but the original kept its data: {:?}", used, before);
            prop_assert!(after.is_err(), "used {} bytes: guarded module returned {:?}", used, after);
        }
    }
}
