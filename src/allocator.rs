//! The allocator: which functions of a module allocate and release heap blocks, and how each
//! was found (STYLE.md #10: facts found once, about the whole toolchain zoo).
//!
//! Three sources, in this order of trust:
//!
//! 1. the user: `--malloc NAME|INDEX`, `--free …` and the other roles ([`Manual`]);
//! 2. names that survive: the name section, then exports (`malloc`, `free`, `dlmalloc`,
//!    `calloc`, `emscripten_builtin_malloc`, Zig's `c.malloc.free`, …), following forwarders
//!    (`malloc` whose whole body is `local.get 0; call $dlmalloc` does what `dlmalloc` does);
//! 3. the code, for stripped modules: the allocators that toolchains link, recognized by their
//!    code and call structure ([`Family`]). Several independent facts must agree for each:
//!    - dlmalloc (wasi-libc 2022 and current, wasi-sdk, Emscripten's default): the allocation
//!      function normalizes requests with dlmalloc's constants (small requests below 245 bytes,
//!      `MAX_REQUEST` −64, `(n + 19) & −16` or `(n + 11) & −8` padding) and reaches the
//!      function that grows memory (`sbrk`: `memory.grow`, or Emscripten's
//!      `emscripten_resize_heap` import); the release function reads the chunk header before
//!      its argument, shares the allocator's state (constant addresses of `_gm_`) with the
//!      allocation function and does not grow memory;
//!    - emmalloc (Emscripten's `-sMALLOC=emmalloc`, zig 0.14's wasi libc): the allocation
//!      primitive is `emmalloc_memalign(alignment, size)`, which rejects sizes above
//!      `MAX_ALLOC_SIZE` (−57) and reaches the growth function; `malloc` passes it a constant
//!      alignment; the release function reads the region header before its argument and
//!      shares the state with it.
//!
//!    The other roles (`calloc`, `realloc`, `aligned_alloc`/`memalign`, `posix_memalign`,
//!    `malloc_usable_size`) are found among the callers of the allocation function by their
//!    shape (a multiplication then a fill; a copy and a release; …).
//!
//! Whatever the source, the result must pass one check before a pass may wrap it: every
//! function that uses the allocator's state (the constant addresses both the allocation and
//! the release function access) must be one of the found functions or called only by them
//! (`dispose_chunk`, `sys_alloc`: their callers are wrapped or replaced), and no other function
//! may read the header in front of a block it got from the allocation function. A function
//! that breaks this — an inlined `aligned_alloc` that calls the allocator's core directly, an
//! unrecognized entry like `mallinfo` — makes the allocator unwrappable, and [`find`] says
//! which function and why. When malloc and free share no state themselves (Zig's malloc and
//! free call `heap.BrkAllocator`'s functions, which keep free lists in static arrays indexed at
//! run time), the state is looked for in the functions they call: each of those that grows
//! memory or accesses static memory must be called only by the allocator's functions (wasm-opt
//! inlines Zig's `aligned_alloc` into its callers, which then allocate blocks without a header:
//! the wrapped free would stop a correct program on them), and the static addresses they share
//! are the state, checked as above. When there is none (position-independent code reaches it
//! through `__memory_base`), names are still trusted and the report says the check was not
//! possible; the code alone is then not enough.

use crate::module::Module;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use wasmparser::{FuncType, Operator, ValType};

/// What an allocator function does for the wrappers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `(size) -> pointer`: wrapped in place.
    Malloc,
    /// `(pointer) -> ()`: wrapped in place.
    Free,
    /// `(count, size) -> pointer`
    Calloc,
    /// `(pointer, size) -> pointer`
    Realloc,
    /// `(alignment, size) -> pointer` (`aligned_alloc`, `memalign`, `emmalloc_memalign`)
    Aligned,
    /// `(out, alignment, size) -> error`
    PosixMemalign,
    /// `(pointer) -> size`
    UsableSize,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Malloc,
        Role::Free,
        Role::Calloc,
        Role::Realloc,
        Role::Aligned,
        Role::PosixMemalign,
        Role::UsableSize,
    ];

    /// The type a function in this role must have.
    pub fn ty(self) -> FuncType {
        use ValType::I32;
        match self {
            Role::Malloc | Role::UsableSize => FuncType::new([I32], [I32]),
            Role::Free => FuncType::new([I32], []),
            Role::Calloc | Role::Realloc | Role::Aligned => FuncType::new([I32, I32], [I32]),
            Role::PosixMemalign => FuncType::new([I32, I32, I32], [I32]),
        }
    }

    /// The C name of the role, for messages and options.
    pub fn c_name(self) -> &'static str {
        match self {
            Role::Malloc => "malloc",
            Role::Free => "free",
            Role::Calloc => "calloc",
            Role::Realloc => "realloc",
            Role::Aligned => "aligned_alloc",
            Role::PosixMemalign => "posix_memalign",
            Role::UsableSize => "malloc_usable_size",
        }
    }

    /// Names the role goes by in the toolchains' libcs, in the order they are tried. Zig 0.15
    /// and later link a malloc of their own (`lib/c/malloc.zig`) whose functions the name
    /// section calls by their Zig paths (`c.malloc.free`; `malloc` itself keeps its C name).
    fn names(self) -> &'static [&'static str] {
        match self {
            Role::Malloc => &[
                "malloc",
                "dlmalloc",
                "__libc_malloc",
                "emscripten_builtin_malloc",
                "c.malloc.malloc",
            ],
            Role::Free => &[
                "free",
                "dlfree",
                "__libc_free",
                "emscripten_builtin_free",
                "c.malloc.free",
            ],
            Role::Calloc => &["calloc", "dlcalloc", "__libc_calloc", "c.malloc.calloc"],
            Role::Realloc => &["realloc", "dlrealloc", "__libc_realloc", "c.malloc.realloc"],
            Role::Aligned => &[
                "aligned_alloc",
                "memalign",
                "dlmemalign",
                "internal_memalign",
                "emmalloc_memalign",
                "emscripten_builtin_memalign",
                "c.malloc.aligned_alloc",
                "c.malloc.memalign",
            ],
            Role::PosixMemalign => &[
                "posix_memalign",
                "dlposix_memalign",
                "c.malloc.posix_memalign",
            ],
            Role::UsableSize => &[
                "malloc_usable_size",
                "dlmalloc_usable_size",
                "c.malloc.malloc_usable_size",
            ],
        }
    }
}

/// A function named on the command line: by name (name section, else export) or by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Index(u32),
}

impl std::str::FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty function name".into());
        }
        Ok(match s.parse::<u32>() {
            Ok(i) => Selector::Index(i),
            Err(_) => Selector::Name(s.to_string()),
        })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Name(n) => write!(f, "`{n}`"),
            Selector::Index(i) => write!(f, "function {i}"),
        }
    }
}

/// Allocator functions the user named (`--malloc`, `--free`, …).
#[derive(Clone, Debug, Default)]
pub struct Manual {
    pub functions: Vec<(Role, Selector)>,
}

impl Manual {
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }
}

/// The allocator's code, when it was recognized.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Dlmalloc,
    Emmalloc,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Dlmalloc => "dlmalloc",
            Family::Emmalloc => "emmalloc",
        }
    }
}

/// One allocator function and how it was found.
#[derive(Clone, Debug, Serialize)]
pub struct AllocFn {
    pub role: Role,
    pub func: u32,
    /// The name it was found by (for messages), else `function N`.
    pub label: String,
    pub how: String,
}

/// The module's allocator.
#[derive(Clone, Debug, Serialize)]
pub struct Allocator {
    /// The recognized code, if any (names alone leave it `None`).
    pub family: Option<Family>,
    /// Every function by role. Exactly one `Malloc` and one `Free`; `Aligned` may have
    /// several (`aligned_alloc`, `memalign`, `internal_memalign`).
    pub functions: Vec<AllocFn>,
    /// The allocation primitive when it takes an alignment (`emmalloc_memalign`): blocks come
    /// from it, and `malloc` only passes it a constant alignment.
    pub aligned_core: Option<u32>,
    /// Functions only the allocator calls (left as they are).
    pub private: Vec<u32>,
    /// The facts that agreed, and what could not be checked.
    pub evidence: Vec<String>,
}

impl Allocator {
    pub fn one(&self, role: Role) -> u32 {
        self.functions
            .iter()
            .find(|f| f.role == role)
            .map(|f| f.func)
            .expect("malloc and free are always found")
    }

    pub fn malloc(&self) -> u32 {
        self.one(Role::Malloc)
    }

    pub fn free(&self) -> u32 {
        self.one(Role::Free)
    }
}

// ---------------------------------------------------------------------------------------------
// What each function's code does, from one walk over its body.

/// Constants whose presence the fingerprints test.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Marker {
    /// dlmalloc: small requests end at `MAX_SMALL_REQUEST` (236 with 16-byte alignment, 244
    /// with 8).
    SmallRequest = 1 << 0,
    /// dlmalloc: `MAX_REQUEST` on 32-bit targets, −64 (compared as `> −65`).
    MaxRequest = 1 << 1,
    /// dlmalloc with 16-byte alignment pads `(n + 19) & −16`.
    Pad16 = 1 << 2,
    /// dlmalloc with 8-byte alignment pads `(n + 11) & −8`.
    Pad8 = 1 << 3,
    MinusSixteen = 1 << 4,
    MinusEight = 1 << 5,
    /// emmalloc: `MAX_ALLOC_SIZE` 0xffffffc7.
    EmmallocMax = 1 << 6,
    /// dlmalloc's `mparams.magic` seed 0x55555558.
    DlMagic = 1 << 7,
    /// EINVAL, in WASI's (28) or Linux's (22) numbering, and WASI's ENOMEM (48):
    /// posix_memalign's results.
    Einval = 1 << 8,
    Enomem = 1 << 9,
    Three = 1 << 10,
}

fn marker_of(value: i32) -> u32 {
    let marker = match value {
        // MAX_SMALL_REQUEST: 255 - 15 - 4 with 16-byte alignment, 255 - 7 - 4 with 8.
        236 | 237 | 244 | 245 => Marker::SmallRequest,
        -64 | -65 => Marker::MaxRequest,
        19 => Marker::Pad16,
        11 => Marker::Pad8,
        -16 => Marker::MinusSixteen,
        -8 => Marker::MinusEight,
        -57 => Marker::EmmallocMax,
        0x5555_5558 => Marker::DlMagic,
        28 | 22 => Marker::Einval,
        48 => Marker::Enomem,
        3 => Marker::Three,
        _ => return 0,
    };
    marker as u32
}

/// What one function's body does, as far as the allocator facts care.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// Direct callees, ascending.
    pub calls: Vec<u32>,
    /// Constant addresses it loads or stores (address operand a constant, plus the offset),
    /// ascending.
    pub addresses: Vec<u32>,
    /// Offsets of 1024 or more of loads and stores whose address operand is not a constant:
    /// static arrays indexed at run time (Zig's allocator keeps its free lists so,
    /// `frees[class]`), ascending.
    pub static_offsets: Vec<u32>,
    pub grows_memory: bool,
    pub fills: bool,
    pub copies: bool,
    pub multiplies: bool,
    /// Operators in the body.
    pub size: u32,
    markers: u32,
    /// The whole body passes constants and its parameters in order to one function
    /// (`local.get 0; call $dlmalloc` or `i32.const 16; local.get 0; call $emmalloc_memalign`):
    /// the callee and the constants put before the parameters.
    pub forwards: Option<(u32, Vec<i32>)>,
    /// Reads memory just below its first parameter (a block header).
    pub reads_below_param: bool,
    /// Callees whose result it reads memory just below (the header of a block it allocated).
    pub reads_below_result_of: Vec<u32>,
    /// Callees whose result it writes memory just below.
    pub writes_below_result_of: Vec<u32>,
    /// Stores through its first parameter (`*out = p`).
    pub stores_to_param: bool,
}

impl Shape {
    fn has(&self, m: Marker) -> bool {
        self.markers & m as u32 != 0
    }
}

/// The value an instruction leaves, as far as the walk tracks it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Val {
    Unknown,
    Const(i32),
    Local(u32),
    /// `local - k`
    Below(u32, i32),
    /// The result of calling a function.
    Result(u32),
}

struct Arity<'a, 'm>(&'a Module<'m>);

impl wasmparser::ModuleArity for Arity<'_, '_> {
    fn sub_type_at(&self, type_idx: u32) -> Option<&wasmparser::SubType> {
        self.0.types.get(type_idx as usize)
    }
    fn tag_type_arity(&self, at: u32) -> Option<(u32, u32)> {
        let t = self.0.tags.get(at as usize)?;
        let f = self.0.func_type(t.func_type_idx)?;
        Some((f.params().len() as u32, f.results().len() as u32))
    }
    fn type_index_of_function(&self, function_idx: u32) -> Option<u32> {
        self.0.func_types.get(function_idx as usize).copied()
    }
    fn func_type_of_cont_type(&self, _: &wasmparser::ContType) -> Option<&FuncType> {
        None
    }
    fn sub_type_of_ref_type(&self, _: &wasmparser::RefType) -> Option<&wasmparser::SubType> {
        None
    }
    fn control_stack_height(&self) -> u32 {
        0
    }
    fn label_block(&self, _: u32) -> Option<(wasmparser::BlockType, wasmparser::FrameKind)> {
        None
    }
}

fn mem0(m: &wasmparser::MemArg) -> bool {
    matches!(m.target, wasmparser::MemArgTarget::Memory(0))
}

/// The address operand and offset of a load or store of memory 0, and whether it stores.
fn memory_access(op: &Operator<'_>) -> Option<(bool, u64)> {
    use Operator::*;
    match op {
        I32Load { memarg }
        | I64Load { memarg }
        | F32Load { memarg }
        | F64Load { memarg }
        | I32Load8S { memarg }
        | I32Load8U { memarg }
        | I32Load16S { memarg }
        | I32Load16U { memarg }
        | I64Load8S { memarg }
        | I64Load8U { memarg }
        | I64Load16S { memarg }
        | I64Load16U { memarg }
        | I64Load32S { memarg }
        | I64Load32U { memarg } => mem0(memarg).then_some((false, memarg.offset)),
        I32Store { memarg }
        | I64Store { memarg }
        | F32Store { memarg }
        | F64Store { memarg }
        | I32Store8 { memarg }
        | I32Store16 { memarg }
        | I64Store8 { memarg }
        | I64Store16 { memarg }
        | I64Store32 { memarg } => mem0(memarg).then_some((true, memarg.offset)),
        _ => None,
    }
}

/// Walks one body with a small abstract stack: constants, locals, `local - k` and call
/// results are tracked within straight-line code; anything else (and every block boundary)
/// forgets what the stack held. Good enough to see constant addresses, header reads and
/// forwarders, which is all the fingerprints ask.
pub fn shape(m: &Module<'_>, func: u32) -> Shape {
    let mut s = Shape::default();
    let Some(body) = m.body(func) else {
        return s;
    };
    let Ok(mut ops) = body.get_operators_reader() else {
        return s;
    };
    let params = m.func_sig(func).map_or(0, |t| t.params().len() as u32);
    let arity = Arity(m);
    let mut stack: Vec<Val> = Vec::new();
    // Parameters given another value: reads below them are not reads below the argument.
    let mut overwritten: HashSet<u32> = HashSet::new();
    // Locals that hold the result of a call (local → callee), or `param - k`.
    let mut holds_result: HashMap<u32, u32> = HashMap::new();
    let mut holds_below: HashMap<u32, (u32, i32)> = HashMap::new();
    let mut calls = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut static_offsets = BTreeSet::new();
    let mut below_results = BTreeSet::new();
    let mut below_results_written = BTreeSet::new();
    // Forwarder: constants, then local.get 0..params, then one call, then end.
    let mut fwd_consts: Vec<i32> = Vec::new();
    let mut fwd_next_param = 0u32;
    let mut fwd_callee: Option<u32> = None;
    let mut fwd_ok = true;
    let pop = |stack: &mut Vec<Val>| stack.pop().unwrap_or(Val::Unknown);
    while !ops.eof() {
        let Ok(op) = ops.read() else { break };
        s.size += 1;
        // The forwarder shape.
        if fwd_ok {
            match (&op, fwd_callee) {
                (Operator::I32Const { value }, None) if fwd_next_param == 0 => {
                    fwd_consts.push(*value)
                }
                (Operator::LocalGet { local_index }, None) if *local_index == fwd_next_param => {
                    fwd_next_param += 1
                }
                (Operator::Call { function_index }, None) if fwd_next_param == params => {
                    fwd_callee = Some(*function_index)
                }
                (Operator::End, Some(_)) if ops.eof() => {}
                _ => fwd_ok = false,
            }
        }
        match &op {
            Operator::I32Const { value } => {
                s.markers |= marker_of(*value);
                stack.push(Val::Const(*value));
                continue;
            }
            Operator::LocalGet { local_index } => {
                stack.push(match holds_below.get(local_index) {
                    Some(&(l, 0)) => Val::Local(l),
                    Some(&(l, k)) => Val::Below(l, k),
                    None => Val::Local(*local_index),
                });
                continue;
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                let v = pop(&mut stack);
                if *local_index < params {
                    overwritten.insert(*local_index);
                }
                match v {
                    Val::Result(c) => holds_result.insert(*local_index, c),
                    _ => holds_result.remove(local_index),
                };
                // A copy of a local, or of `local - k`, stands for it.
                match v {
                    Val::Below(l, k) if l != *local_index => {
                        holds_below.insert(*local_index, (l, k))
                    }
                    Val::Local(l) if l != *local_index => holds_below.insert(*local_index, (l, 0)),
                    _ => holds_below.remove(local_index),
                };
                if matches!(op, Operator::LocalTee { .. }) {
                    // A tee'd call result is read through the local from now on.
                    stack.push(match v {
                        Val::Result(_) => Val::Local(*local_index),
                        other => other,
                    });
                }
                continue;
            }
            Operator::I32Sub | Operator::I32Add => {
                let b = pop(&mut stack);
                let a = pop(&mut stack);
                let sub = matches!(op, Operator::I32Sub);
                stack.push(match (a, b) {
                    (Val::Below(l, j), Val::Const(k)) => Val::Below(
                        l,
                        if sub {
                            j.wrapping_add(k)
                        } else {
                            j.wrapping_sub(k)
                        },
                    ),
                    (Val::Local(l), Val::Const(k)) if sub => Val::Below(l, k),
                    (Val::Local(l), Val::Const(k)) | (Val::Const(k), Val::Local(l)) if !sub => {
                        Val::Below(l, k.wrapping_neg())
                    }
                    (Val::Const(x), Val::Const(y)) => Val::Const(if sub {
                        x.wrapping_sub(y)
                    } else {
                        x.wrapping_add(y)
                    }),
                    _ => Val::Unknown,
                });
                continue;
            }
            Operator::I32Mul | Operator::I64Mul => s.multiplies = true,
            Operator::MemoryGrow { .. } => s.grows_memory = true,
            Operator::MemoryFill { .. } => s.fills = true,
            Operator::MemoryCopy { .. } => s.copies = true,
            Operator::Call { function_index } => {
                calls.insert(*function_index);
                let (n, r) = m
                    .func_sig(*function_index)
                    .map_or((0, 0), |t| (t.params().len(), t.results().len()));
                for _ in 0..n {
                    pop(&mut stack);
                }
                if r == 1 {
                    stack.push(Val::Result(*function_index));
                } else {
                    stack.extend(std::iter::repeat_n(Val::Unknown, r));
                }
                continue;
            }
            _ => {}
        }
        if let Some((store, offset)) = memory_access(&op) {
            if store {
                pop(&mut stack);
            }
            let address = pop(&mut stack);
            if !matches!(address, Val::Const(_))
                && let Ok(o) = u32::try_from(offset)
                && o >= 1024
            {
                static_offsets.insert(o);
            }
            match address {
                Val::Const(c) => {
                    let a = (c as u32 as u64).saturating_add(offset);
                    if let Ok(a) = u32::try_from(a) {
                        addresses.insert(a);
                    }
                }
                Val::Below(l, k) if (1..=16).contains(&((k as i64) - offset as i64)) => {
                    if l == 0 && params > 0 && !store && !overwritten.contains(&0) {
                        s.reads_below_param = true;
                    }
                    if let Some(&c) = holds_result.get(&l) {
                        if store {
                            below_results_written.insert(c);
                        } else {
                            below_results.insert(c);
                        }
                    }
                }
                Val::Local(0) if store && params > 0 && !overwritten.contains(&0) => {
                    s.stores_to_param = true
                }
                _ => {}
            }
            if !store {
                stack.push(Val::Unknown);
            }
            continue;
        }
        match op.operator_arity(&arity) {
            Some((n, r)) if !is_control(&op) => {
                for _ in 0..n {
                    pop(&mut stack);
                }
                stack.extend(std::iter::repeat_n(Val::Unknown, r as usize));
            }
            _ => stack.clear(),
        }
    }
    if fwd_ok && let Some(callee) = fwd_callee {
        s.forwards = Some((callee, fwd_consts));
    }
    s.calls = calls.into_iter().collect();
    s.addresses = addresses.into_iter().collect();
    s.static_offsets = static_offsets.into_iter().collect();
    s.reads_below_result_of = below_results.into_iter().collect();
    s.writes_below_result_of = below_results_written.into_iter().collect();
    s
}

fn is_control(op: &Operator<'_>) -> bool {
    use Operator::*;
    matches!(
        op,
        Block { .. }
            | Loop { .. }
            | If { .. }
            | Else
            | End
            | Br { .. }
            | BrIf { .. }
            | BrTable { .. }
            | Return
            | Unreachable
            | Try { .. }
            | TryTable { .. }
            | Catch { .. }
            | CatchAll
            | Delegate { .. }
            | Throw { .. }
            | ThrowRef
            | Rethrow { .. }
            | ReturnCall { .. }
            | ReturnCallIndirect { .. }
            | ReturnCallRef { .. }
            | BrOnNull { .. }
            | BrOnNonNull { .. }
            | BrOnCast { .. }
            | BrOnCastFail { .. }
    )
}

/// The shapes of every defined function, and who calls whom.
pub struct Code {
    pub imported: u32,
    pub shapes: Vec<Shape>,
    /// Callers of every function (imported ones included), ascending.
    pub callers: Vec<Vec<u32>>,
    /// Functions reachable from outside the code: exported, in a table, the start function.
    pub external: HashSet<u32>,
}

impl Code {
    pub fn new(m: &Module<'_>) -> Code {
        let n = m.bodies.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let chunk = n.div_ceil(threads).max(1);
        let imported = m.imported_funcs;
        let shapes: Vec<Shape> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    s.spawn(move || {
                        (start..(start + chunk).min(n))
                            .map(|i| shape(m, imported + i as u32))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("shape scan panicked"))
                .collect()
        });
        let mut callers = vec![Vec::new(); m.num_funcs() as usize];
        for (i, s) in shapes.iter().enumerate() {
            for &c in &s.calls {
                if let Some(v) = callers.get_mut(c as usize) {
                    v.push(imported + i as u32);
                }
            }
        }
        let mut external: HashSet<u32> = m
            .exports
            .iter()
            .filter(|e| e.kind == wasmparser::ExternalKind::Func)
            .map(|e| e.index)
            .collect();
        external.extend(m.start);
        for e in &m.elements {
            match &e.items {
                wasmparser::ElementItems::Functions(r) => {
                    external.extend(r.clone().into_iter().flatten())
                }
                wasmparser::ElementItems::Expressions(_, r) => {
                    for expr in r.clone().into_iter().flatten() {
                        let mut ops = expr.get_operators_reader();
                        while let Ok(op) = ops.read() {
                            if let Operator::RefFunc { function_index } = op {
                                external.insert(function_index);
                            }
                        }
                    }
                }
            }
        }
        // `ref.func` in code or globals also lets a function escape.
        for g in &m.defined_globals {
            let mut ops = g.init.get_operators_reader();
            while let Ok(op) = ops.read() {
                if let Operator::RefFunc { function_index } = op {
                    external.insert(function_index);
                }
            }
        }
        Code {
            imported,
            shapes,
            callers,
            external,
        }
    }

    pub fn shape(&self, f: u32) -> Option<&Shape> {
        self.shapes.get(f.checked_sub(self.imported)? as usize)
    }

    fn callers(&self, f: u32) -> &[u32] {
        self.callers.get(f as usize).map_or(&[], |v| v.as_slice())
    }

    /// Whether `from` reaches a function in `targets` within `depth` calls.
    fn reaches(&self, from: u32, targets: &HashSet<u32>, depth: u32) -> bool {
        let mut frontier = vec![from];
        let mut seen = HashSet::new();
        for _ in 0..=depth {
            let mut next = Vec::new();
            for f in frontier {
                if targets.contains(&f) {
                    return true;
                }
                if seen.insert(f)
                    && let Some(s) = self.shape(f)
                {
                    next.extend(s.calls.iter().copied());
                }
            }
            frontier = next;
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the allocator.

/// The function a name denotes: the name section first, then exports.
pub fn named(m: &Module<'_>, names: &HashMap<u32, String>, name: &str) -> Option<(u32, String)> {
    let mut by_name: Vec<u32> = names
        .iter()
        .filter(|(_, n)| n.as_str() == name)
        .map(|(&f, _)| f)
        .collect();
    by_name.sort();
    if let Some(&f) = by_name.first() {
        return Some((f, format!("the name section calls function {f} `{name}`")));
    }
    m.exports
        .iter()
        .find(|e| e.name == name && e.kind == wasmparser::ExternalKind::Func)
        .map(|e| {
            (
                e.index,
                format!("function {} is exported as `{name}`", e.index),
            )
        })
}

/// Follows plain forwarders (the whole body passes the parameters on to a function of the same
/// type): the function at the end does the work.
fn resolve(m: &Module<'_>, code: &Code, mut f: u32, how: &mut String) -> u32 {
    for _ in 0..4 {
        match code.shape(f).and_then(|s| s.forwards.as_ref()) {
            Some((g, consts))
                if consts.is_empty()
                    && m.func_sig(*g) == m.func_sig(f)
                    && *g >= m.imported_funcs
                    && *g != f =>
            {
                how.push_str(&format!(", whose body only calls function {g}"));
                f = *g;
            }
            _ => break,
        }
    }
    f
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    User,
    Name,
    Code,
}

struct Found {
    role: Role,
    func: u32,
    label: String,
    how: String,
    source: Source,
}

/// Finds the module's allocator; `Err` says why it cannot be established.
pub fn find(
    m: &Module<'_>,
    names: &HashMap<u32, String>,
    manual: &Manual,
) -> Result<Allocator, String> {
    if m.bodies.is_empty() {
        return Err("the module defines no functions".into());
    }
    let code = Code::new(m);
    let exported: HashMap<u32, &str> = m
        .exports
        .iter()
        .filter(|e| e.kind == wasmparser::ExternalKind::Func)
        .map(|e| (e.index, e.name))
        .collect();
    let label = |f: u32| match (names.get(&f), exported.get(&f)) {
        (Some(n), _) => format!("`{n}` (function {f})"),
        (None, Some(n)) => format!("`{n}` (function {f})"),
        (None, None) => format!("function {f}"),
    };
    let mut evidence: Vec<String> = Vec::new();

    // 1. The user's choices.
    let mut found: Vec<Found> = Vec::new();
    for (role, sel) in &manual.functions {
        let (f, how) = match sel {
            Selector::Index(i) => (*i, format!("--{} {i}", option_name(*role))),
            Selector::Name(n) => match named(m, names, n) {
                Some((f, how)) => (f, format!("--{} {n}: {how}", option_name(*role))),
                None => {
                    return Err(format!(
                        "--{} {n}: no function of that name in the name section or the exports",
                        option_name(*role)
                    ));
                }
            },
        };
        if f < m.imported_funcs || f >= m.num_funcs() {
            return Err(format!(
                "--{} {sel}: function {f} is {}",
                option_name(*role),
                if f < m.imported_funcs {
                    "imported: only a module's own allocator can be wrapped"
                } else {
                    "not a function of the module"
                }
            ));
        }
        let mut how = how;
        let f = resolve(m, &code, f, &mut how);
        check_type(m, *role, f, &how)?;
        found.push(Found {
            role: *role,
            func: f,
            label: label(f),
            how,
            source: Source::User,
        });
    }
    let user_named: HashSet<Role> = found.iter().map(|f| f.role).collect();

    // 2. Names that survive.
    for role in Role::ALL {
        if user_named.contains(&role) {
            continue;
        }
        for name in role.names() {
            let Some((f, mut how)) = named(m, names, name) else {
                continue;
            };
            if f < m.imported_funcs {
                if matches!(role, Role::Malloc | Role::Free) {
                    return Err(format!(
                        "`{name}` is imported (function {f}): only a module's own allocator can be wrapped"
                    ));
                }
                continue;
            }
            let g = resolve(m, &code, f, &mut how);
            if m.func_sig(g) != Some(&role.ty()) {
                if matches!(role, Role::Malloc | Role::Free) {
                    return Err(format!(
                        "`{name}` (function {g}) has type {}, not {}",
                        m.func_sig(g)
                            .map_or("not a function type".into(), crate::sig::show),
                        crate::sig::show(&role.ty())
                    ));
                }
                continue;
            }
            if found.iter().any(|x| x.func == g && x.role == role) {
                continue;
            }
            found.push(Found {
                role,
                func: g,
                label: format!("`{name}` (function {g})"),
                how,
                source: Source::Name,
            });
        }
    }

    // 3. The code: it must agree with the names on malloc and free.
    let recognized = recognize(m, &code);
    let (family, aligned_core) = match &recognized {
        Ok(r) => (Some(r.family), r.aligned_core),
        Err(_) => (None, None),
    };
    match &recognized {
        Ok(r) => {
            evidence.extend(r.evidence.iter().cloned());
            for (role, f, how) in &r.functions {
                let same_role = found.iter().position(|x| x.role == *role);
                match same_role.map(|i| (i, found[i].func == *f, found[i].source)) {
                    Some((i, true, _)) => {
                        found[i].how = format!("{}; its code agrees: {how}", found[i].how);
                    }
                    Some((i, false, source)) if matches!(role, Role::Malloc | Role::Free) => {
                        let x = &found[i];
                        if source == Source::User {
                            evidence.push(format!(
                                "the code looks like {}'s {} at {}, but --{} names {}",
                                r.family.name(),
                                role.c_name(),
                                label(*f),
                                option_name(*role),
                                x.label
                            ));
                            continue;
                        }
                        return Err(format!(
                            "names and code disagree: {} is {} by name ({}), but the code of {} \
                             looks like {}'s {}; name the allocator with --{}",
                            role.c_name(),
                            x.label,
                            x.how,
                            label(*f),
                            r.family.name(),
                            role.c_name(),
                            option_name(*role)
                        ));
                    }
                    _ if user_named.contains(role) => {}
                    _ if found.iter().any(|x| x.func == *f) => {}
                    _ => found.push(Found {
                        role: *role,
                        func: *f,
                        label: label(*f),
                        how: how.clone(),
                        source: Source::Code,
                    }),
                }
            }
        }
        Err(why) => {
            if !found.iter().any(|x| x.role == Role::Malloc) {
                return Err(format!(
                    "cannot find `malloc`: no function of that name in the name section \
                     (stripped?) and no export of it, and the code is not an allocator wasmfix \
                     recognizes ({why}); keep the name section, or name the allocator with \
                     --malloc and --free"
                ));
            }
            evidence.push(format!("the allocator's code was not recognized: {why}"));
        }
    }
    let malloc = exactly_one(&found, Role::Malloc)?;
    let free = exactly_one(&found, Role::Free)?;
    if malloc == free {
        return Err(format!(
            "malloc and free are the same function {malloc}: cannot tell what it does"
        ));
    }

    // The other roles, by shape, among the allocator's functions, when names left them out.
    let core = aligned_core.unwrap_or(malloc);
    let window = allocator_window(m, &code, core, free);
    if recognized.is_err() {
        for (role, f, how) in roles_by_shape(m, &code, core, free, &window) {
            if !user_named.contains(&role) && !found.iter().any(|x| x.func == f) {
                found.push(Found {
                    role,
                    func: f,
                    label: label(f),
                    how,
                    source: Source::Code,
                });
            }
        }
    }
    let mut by_func: BTreeMap<u32, Role> = BTreeMap::new();
    for x in &found {
        if let Some(r) = by_func.insert(x.func, x.role)
            && r != x.role
        {
            return Err(format!(
                "{} is both {} and {}: cannot tell what it does",
                x.label,
                r.c_name(),
                x.role.c_name()
            ));
        }
    }

    // The check: nothing outside the found functions uses the allocator's internals.
    let members: HashSet<u32> = found.iter().map(|x| x.func).chain(aligned_core).collect();
    let chunk_heads = family == Some(Family::Dlmalloc);
    let entry = Entry {
        malloc,
        free,
        aligned_core,
        chunk_heads,
    };
    let closed = check_closed(m, &code, &members, &entry, &label)
        .map_err(|e| format!("the allocator cannot be wrapped safely: {e}"))?;
    let private = match closed {
        Closed::Checked {
            private,
            state,
            through,
            head_readers,
        } => {
            for f in head_readers {
                evidence.push(format!(
                    "{} reads dlmalloc's chunk head in front of blocks it allocates (an inlined \
                     calloc): wrapped blocks keep an in-use chunk head there",
                    label(f)
                ));
            }
            evidence.push(format!(
                "closed: only the allocator's functions use its state ({state} {}); {} \
                 functions are called only by them",
                if through {
                    "static addresses shared by the functions malloc and free call, which only \
                     the allocator calls"
                } else {
                    "constant addresses shared by malloc and free"
                },
                private.len()
            ));
            private
        }
        Closed::Unknown(why) => {
            let by_code_only = found
                .iter()
                .filter(|x| matches!(x.role, Role::Malloc | Role::Free))
                .all(|x| x.source == Source::Code);
            if by_code_only {
                return Err(format!(
                    "the code looks like {}, but {why}; name the allocator with --malloc and --free",
                    family.map_or("an allocator", |f| f.name())
                ));
            }
            evidence.push(format!(
                "not checked that nothing else uses the allocator's internals: {why}"
            ));
            Vec::new()
        }
    };
    found.sort_by_key(|x| (x.role, x.func));
    Ok(Allocator {
        family,
        functions: found
            .into_iter()
            .map(|x| AllocFn {
                role: x.role,
                func: x.func,
                label: x.label,
                how: x.how,
            })
            .collect(),
        aligned_core,
        private,
        evidence,
    })
}

/// The allocator's translation unit: wasm-ld lays out each object file's functions together
/// and wasm-opt keeps their order, so the allocator's other functions lie next to its core and
/// its free. Grows from `[min(core, free), max(core, free)]` while the neighbour calls the core
/// or free, is called by the functions so far, uses their state, or reads a block header
/// without calling anything (`malloc_usable_size`); at most 16 functions each way.
fn allocator_window(m: &Module<'_>, code: &Code, core: u32, free: u32) -> BTreeSet<u32> {
    let grow = growers(m, code);
    let state = state_of(code, core, Follow::Helpers(&grow));
    let mut window: BTreeSet<u32> = [core, free].into_iter().collect();
    let (mut lo, mut hi) = (core.min(free), core.max(free));
    if hi - lo > 64 {
        // Not one translation unit: only the two themselves.
        return window;
    }
    for f in lo..=hi {
        window.insert(f);
    }
    let belongs = |f: u32, window: &BTreeSet<u32>| -> bool {
        let Some(s) = code.shape(f) else {
            return false;
        };
        s.calls.iter().any(|&c| c == core || c == free)
            || code.callers(f).iter().any(|c| window.contains(c))
            || s.addresses.iter().any(|a| state.contains(a))
            || (s.reads_below_param && s.calls.is_empty() && s.size < 64)
    };
    for _ in 0..16 {
        let mut grew = false;
        if lo > m.imported_funcs && belongs(lo - 1, &window) {
            lo -= 1;
            window.insert(lo);
            grew = true;
        }
        if hi + 1 < m.num_funcs() && belongs(hi + 1, &window) {
            hi += 1;
            window.insert(hi);
            grew = true;
        }
        if !grew {
            break;
        }
    }
    window
}

/// The command-line option that names `role`.
pub fn option_name(role: Role) -> &'static str {
    match role {
        Role::Malloc => "malloc",
        Role::Free => "free",
        Role::Calloc => "calloc",
        Role::Realloc => "realloc",
        Role::Aligned => "aligned-alloc",
        Role::PosixMemalign => "posix-memalign",
        Role::UsableSize => "malloc-usable-size",
    }
}

fn check_type(m: &Module<'_>, role: Role, f: u32, how: &str) -> Result<(), String> {
    if m.func_sig(f) == Some(&role.ty()) {
        return Ok(());
    }
    Err(format!(
        "{how}: function {f} has type {}, but {} has type {}",
        m.func_sig(f)
            .map_or("not a function type".into(), crate::sig::show),
        role.c_name(),
        crate::sig::show(&role.ty())
    ))
}

fn exactly_one(found: &[Found], role: Role) -> Result<u32, String> {
    let fs: Vec<&Found> = found.iter().filter(|x| x.role == role).collect();
    match fs.as_slice() {
        [x] => Ok(x.func),
        [] => Err(format!(
            "cannot find `{}`: no function of that name in the name section (stripped?) and no \
             export of it; keep the name section or name it with --{}",
            role.c_name(),
            option_name(role)
        )),
        more => Err(format!(
            "several functions do what `{}` does ({}): cannot tell which to wrap",
            role.c_name(),
            more.iter()
                .map(|x| format!("{} ({})", x.label, x.how))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

struct Recognized {
    family: Family,
    functions: Vec<(Role, u32, String)>,
    aligned_core: Option<u32>,
    evidence: Vec<String>,
}

/// Functions that grow memory: `memory.grow`, or a call to Emscripten's
/// `emscripten_resize_heap` import.
fn growers(m: &Module<'_>, code: &Code) -> HashSet<u32> {
    let resize: Option<u32> = m.imported_func("env", "emscripten_resize_heap");
    let mut out = HashSet::new();
    for (i, s) in code.shapes.iter().enumerate() {
        if s.grows_memory || resize.is_some_and(|r| s.calls.contains(&r)) {
            out.insert(code.imported + i as u32);
        }
    }
    out
}

/// The allocators toolchains link, recognized by their code.
fn recognize(m: &Module<'_>, code: &Code) -> Result<Recognized, String> {
    let grow = growers(m, code);
    if grow.is_empty() {
        return Err("no function grows memory (memory.grow or emscripten_resize_heap)".into());
    }
    let malloc_ty = Role::Malloc.ty();
    let aligned_ty = Role::Aligned.ty();
    let free_ty = Role::Free.ty();
    let defined = |f: &u32| *f >= m.imported_funcs;
    let funcs = || m.imported_funcs..m.num_funcs();

    // dlmalloc: the request normalization, mparams' magic seed (in the function or in the
    // init_mparams it calls), and a way to grow memory.
    let has_magic = |f: u32| {
        let s = code.shape(f).expect("defined");
        s.has(Marker::DlMagic)
            || s.calls
                .iter()
                .any(|&c| code.shape(c).is_some_and(|c| c.has(Marker::DlMagic)))
    };
    let dl: Vec<u32> = funcs()
        .filter(|f| m.func_sig(*f) == Some(&malloc_ty))
        .filter(|&f| {
            let s = code.shape(f).expect("defined");
            s.has(Marker::SmallRequest)
                && s.has(Marker::MaxRequest)
                && ((s.has(Marker::Pad16) && s.has(Marker::MinusSixteen))
                    || (s.has(Marker::Pad8) && s.has(Marker::MinusEight)))
                && has_magic(f)
                && code.reaches(f, &grow, 2)
        })
        .collect();
    // emmalloc: emmalloc_memalign rejects sizes above MAX_ALLOC_SIZE, grows memory, and malloc
    // passes it a constant alignment (emmalloc's realloc checks MAX_ALLOC_SIZE too).
    let em: Vec<u32> = funcs()
        .filter(|f| m.func_sig(*f) == Some(&aligned_ty))
        .filter(|&f| {
            let s = code.shape(f).expect("defined");
            s.has(Marker::EmmallocMax)
                && code.reaches(f, &grow, 2)
                && code.callers(f).iter().any(|&c| {
                    m.func_sig(c) == Some(&malloc_ty)
                        && code
                            .shape(c)
                            .and_then(|s| s.forwards.as_ref())
                            .is_some_and(|(g, k)| *g == f && k.len() == 1)
                })
        })
        .collect();
    let (family, core) = match (dl.as_slice(), em.as_slice()) {
        ([f], []) => (Family::Dlmalloc, *f),
        ([], [f]) => (Family::Emmalloc, *f),
        ([], []) => {
            return Err(
                "no function has dlmalloc's request normalization (MAX_SMALL_REQUEST, \
                 MAX_REQUEST, 8- or 16-byte padding) and mparams' magic seed, or emmalloc's \
                 MAX_ALLOC_SIZE check behind a constant-alignment malloc, together with a path \
                 to memory.grow"
                    .into(),
            );
        }
        (d, e) => {
            return Err(format!(
                "several functions look like an allocator's core (dlmalloc: {d:?}, emmalloc: {e:?})"
            ));
        }
    };
    let core_shape = code.shape(core).expect("defined");
    let mut evidence = vec![match family {
        Family::Dlmalloc => format!(
            "function {core} normalizes requests like dlmalloc (MAX_SMALL_REQUEST, MAX_REQUEST \
             -64, {}-byte padding), seeds mparams.magic with 0x55555558 and reaches memory.grow",
            if core_shape.has(Marker::Pad16) { 16 } else { 8 },
        ),
        Family::Emmalloc => format!(
            "function {core} checks emmalloc's MAX_ALLOC_SIZE (0xffffffc7) and reaches memory.grow"
        ),
    }];

    // The state: constant addresses the core and its own callees access.
    let core_state: BTreeSet<u32> = state_of(code, core, Follow::Helpers(&grow));
    if core_state.len() < min_shared_state(family) {
        return Err(format!(
            "function {core} looks like {}, but its state is not at constant addresses \
             (position-independent code?)",
            family.name()
        ));
    }

    // free: reads the header before its argument, shares the state, does not grow memory.
    let frees: Vec<(u32, usize)> = funcs()
        .filter(|f| m.func_sig(*f) == Some(&free_ty))
        .filter_map(|f| {
            let s = code.shape(f)?;
            if !s.reads_below_param || code.reaches(f, &grow, 3) {
                return None;
            }
            let shared = state_of(code, f, Follow::Helpers(&grow))
                .intersection(&core_state)
                .count();
            (shared >= min_shared_state(family)).then_some((f, shared))
        })
        .collect();
    let free = match frees.as_slice() {
        [(f, shared)] => {
            evidence.push(format!(
                "function {f} reads the header before its argument, uses {shared} of the same \
                 state addresses and never grows memory: {}'s free",
                family.name()
            ));
            *f
        }
        [] => {
            return Err(format!(
                "function {core} looks like {}, but no function of type (i32)->() reads a block \
                 header and shares its state (free)",
                family.name()
            ));
        }
        more => {
            return Err(format!(
                "several functions could be {}'s free ({:?})",
                family.name(),
                more.iter().map(|x| x.0).collect::<Vec<_>>()
            ));
        }
    };
    let mut functions = vec![(Role::Free, free, evidence.last().cloned().expect("pushed"))];
    let (malloc, aligned_core) = match family {
        Family::Dlmalloc => {
            functions.push((Role::Malloc, core, evidence[0].clone()));
            (core, None)
        }
        Family::Emmalloc => {
            // malloc passes a constant alignment to the core.
            let mallocs: Vec<u32> = code
                .callers(core)
                .iter()
                .copied()
                .filter(defined)
                .filter(|&f| {
                    m.func_sig(f) == Some(&malloc_ty)
                        && code
                            .shape(f)
                            .and_then(|s| s.forwards.as_ref())
                            .is_some_and(|(g, c)| *g == core && c.len() == 1)
                })
                .collect();
            let malloc = match mallocs.as_slice() {
                [f] => *f,
                _ => {
                    return Err(format!(
                        "function {core} looks like emmalloc_memalign, but {} functions pass it \
                         a constant alignment (malloc)",
                        mallocs.len()
                    ));
                }
            };
            evidence.push(format!(
                "function {malloc} only calls function {core} with a constant alignment: malloc"
            ));
            functions.push((Role::Malloc, malloc, evidence.last().cloned().unwrap()));
            functions.push((Role::Aligned, core, evidence[0].clone()));
            (malloc, Some(core))
        }
    };
    let core = aligned_core.unwrap_or(malloc);
    let window = allocator_window(m, code, core, free);
    evidence.push(format!(
        "the allocator's functions lie together: functions {}..={}",
        window.first().expect("core"),
        window.last().expect("core")
    ));
    for (role, f, how) in roles_by_shape(m, code, core, free, &window) {
        if !functions.iter().any(|x| x.1 == f) {
            functions.push((role, f, how));
        }
    }
    Ok(Recognized {
        family,
        functions,
        aligned_core,
        evidence,
    })
}

/// How many constant state addresses malloc and free must share: dlmalloc's `_gm_` has a dozen
/// fields both touch; emmalloc keeps its free lists in arrays indexed at run time and both
/// touch one fixed word (`freeRegionBucketsUsed`).
fn min_shared_state(family: Family) -> usize {
    match family {
        Family::Dlmalloc => 2,
        Family::Emmalloc => 1,
    }
}

/// Which functions [`state_of`] follows from the one it starts at.
#[derive(Clone, Copy)]
enum Follow<'a> {
    /// The allocator's own helpers: callees called by few (not libc's memset), except those
    /// that grow memory (`sbrk`'s state is not the allocator's).
    Helpers(&'a HashSet<u32>),
    /// Only these (the functions only the allocator calls), growing memory or not; the static
    /// arrays they index count as state too.
    Only(&'a BTreeSet<u32>),
}

/// The constant addresses `f` and the functions it calls that `follow` admits access (at most
/// 64 functions).
fn state_of(code: &Code, f: u32, follow: Follow<'_>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut todo = vec![f];
    let mut seen = HashSet::new();
    while let Some(g) = todo.pop() {
        let grows = matches!(follow, Follow::Helpers(grow) if g != f && grow.contains(&g));
        if !seen.insert(g) || grows || seen.len() > 64 {
            continue;
        }
        let Some(s) = code.shape(g) else { continue };
        out.extend(s.addresses.iter().copied());
        match follow {
            Follow::Helpers(_) => todo.extend(
                s.calls
                    .iter()
                    .copied()
                    .filter(|&c| code.callers(c).len() <= 8),
            ),
            Follow::Only(these) => {
                out.extend(s.static_offsets.iter().copied());
                todo.extend(s.calls.iter().copied().filter(|c| these.contains(c)));
            }
        }
    }
    out
}

/// The other entry points, among the allocator's functions (`window`), by their shape.
fn roles_by_shape(
    m: &Module<'_>,
    code: &Code,
    core: u32,
    free: u32,
    window: &BTreeSet<u32>,
) -> Vec<(Role, u32, String)> {
    let mut out = Vec::new();
    let copy_like = |s: &Shape| {
        s.copies
            || s.calls.iter().any(|&c| {
                m.func_sig(c)
                    .is_some_and(|t| t.params().len() == 3 && t.results().len() == 1)
            })
    };
    let candidates = window
        .iter()
        .copied()
        .filter(|&f| f >= m.imported_funcs && f != free && f != core);
    for f in candidates {
        let s = code.shape(f).expect("defined");
        let sig = m.func_sig(f);
        if s.forwards.is_some() {
            continue;
        }
        let allocates = s.calls.contains(&core);
        if allocates
            && sig == Some(&Role::Calloc.ty())
            && s.multiplies
            && (s.fills || copy_like(s))
            && !s.calls.contains(&free)
            && !s.reads_below_param
        {
            out.push((
                Role::Calloc,
                f,
                format!(
                    "function {f} multiplies its arguments, allocates with function {core} and \
                     clears the block: calloc"
                ),
            ));
        } else if allocates
            && sig == Some(&Role::Realloc.ty())
            && s.reads_below_param
            && copy_like(s)
        {
            out.push((
                Role::Realloc,
                f,
                format!(
                    "function {f} reads the header of its first argument, allocates with \
                     function {core} and copies: realloc"
                ),
            ));
        } else if allocates
            && sig == Some(&Role::Aligned.ty())
            && !s.reads_below_param
            && !s.multiplies
            && !copy_like(s)
        {
            out.push((
                Role::Aligned,
                f,
                format!(
                    "function {f} of type (i32,i32)->(i32) lies among the allocator's functions, \
                     allocates with function {core} and neither copies nor reads a header: an \
                     aligned allocation"
                ),
            ));
        } else if sig == Some(&Role::UsableSize.ty())
            && s.reads_below_param
            && s.calls.is_empty()
            && s.size < 64
        {
            out.push((
                Role::UsableSize,
                f,
                format!(
                    "function {f} lies among the allocator's functions and only reads the \
                     header before its argument: malloc_usable_size"
                ),
            ));
        }
    }
    // posix_memalign allocates with the core or through an aligned allocation.
    let aligned: Vec<u32> = out
        .iter()
        .filter(|x| x.0 == Role::Aligned)
        .map(|x| x.1)
        .chain([core])
        .collect();
    for f in window.iter().copied().filter(|&f| f >= m.imported_funcs) {
        let Some(s) = code.shape(f) else { continue };
        if m.func_sig(f) == Some(&Role::PosixMemalign.ty())
            && s.stores_to_param
            && s.has(Marker::Einval)
            && let Some(a) = aligned.iter().find(|a| s.calls.contains(a))
        {
            out.push((
                Role::PosixMemalign,
                f,
                format!(
                    "function {f} allocates with function {a}, stores the block through its \
                     first argument and returns EINVAL: posix_memalign"
                ),
            ));
        }
    }
    out
}

/// The allocator's entry points the check starts from.
#[derive(Clone, Copy)]
struct Entry {
    malloc: u32,
    free: u32,
    aligned_core: Option<u32>,
    /// Wrapped blocks keep a dlmalloc chunk head in front (dlmalloc).
    chunk_heads: bool,
}

enum Closed {
    Checked {
        private: Vec<u32>,
        state: usize,
        /// The state was found in the functions malloc and free call (they share none
        /// themselves), each of which is called only by the allocator.
        through: bool,
        /// Functions that read dlmalloc's chunk head in front of blocks they allocate (an
        /// inlined calloc).
        head_readers: Vec<u32>,
    },
    Unknown(String),
}

/// Checks that only the allocator functions (`members`) and functions called only by them use
/// the allocator's state, and that no other function reads the header of a block it got from
/// `malloc`. Returns the private functions.
fn check_closed(
    m: &Module<'_>,
    code: &Code,
    members: &HashSet<u32>,
    entry: &Entry,
    label: &dyn Fn(u32) -> String,
) -> Result<Closed, String> {
    let Entry {
        malloc,
        free,
        aligned_core,
        chunk_heads,
    } = *entry;
    let grow = growers(m, code);
    let core = aligned_core.unwrap_or(malloc);
    let mut state: BTreeSet<u32> = state_of(code, core, Follow::Helpers(&grow))
        .intersection(&state_of(code, free, Follow::Helpers(&grow)))
        .copied()
        .collect();
    // Reached: the functions the members call, directly or not.
    let mut reached: BTreeSet<u32> = BTreeSet::new();
    let mut todo: Vec<u32> = members.iter().copied().collect();
    while let Some(f) = todo.pop() {
        for &c in code.shape(f).map_or(&[][..], |s| &s.calls) {
            if c >= m.imported_funcs && !members.contains(&c) && reached.insert(c) {
                todo.push(c);
            }
        }
    }
    // Private: reached, every caller a member or private, not external.
    let mut private = reached.clone();
    loop {
        let drop: Vec<u32> = private
            .iter()
            .copied()
            .filter(|&f| {
                code.external.contains(&f)
                    || code
                        .callers(f)
                        .iter()
                        .any(|c| !members.contains(c) && !private.contains(c))
            })
            .collect();
        if drop.is_empty() {
            break;
        }
        for f in drop {
            private.remove(&f);
        }
    }
    // Header readers outside: whatever got a block from malloc and reads below it. dlmalloc's
    // calloc, inlined into its only caller, reads the chunk head to see whether the block needs
    // clearing; wrapped blocks keep an in-use chunk head there (see heap-canary), so that one
    // is fine.
    let mut head_readers = Vec::new();
    for (i, s) in code.shapes.iter().enumerate() {
        let f = code.imported + i as u32;
        if members.contains(&f) || private.contains(&f) {
            continue;
        }
        let from_malloc = |v: &[u32]| v.contains(&core) || v.contains(&malloc);
        if from_malloc(&s.writes_below_result_of) {
            return Err(format!(
                "{} writes the header in front of a block it got from {} (inlined allocator \
                 code)",
                label(f),
                label(malloc)
            ));
        }
        if from_malloc(&s.reads_below_result_of) {
            if chunk_heads {
                head_readers.push(f);
                continue;
            }
            return Err(format!(
                "{} reads the header in front of a block it got from {} (an inlined calloc or \
                 malloc_usable_size?): name it with --calloc/--malloc-usable-size if it is one",
                label(f),
                label(malloc)
            ));
        }
    }
    let mut through = false;
    if state.is_empty() {
        // No state to follow from malloc and free themselves: the work is done in functions
        // they call (Zig's malloc calls `heap.BrkAllocator.alloc`, which grows memory, and free
        // calls its `free`, which keeps the free lists). Those that grow memory or access static
        // memory are the allocator's internals, and each must be reached only through the entry
        // points: one called from elsewhere is an entry point inlined into its caller (wasm-opt
        // inlines Zig's aligned_alloc), which would hand out blocks without a header for the
        // wrapped free to stop on, or release wrapped blocks as its own.
        for &g in reached.difference(&private) {
            let Some(s) = code.shape(g) else { continue };
            let holds = if grow.contains(&g) {
                "grows memory"
            } else if !s.addresses.is_empty() || !s.static_offsets.is_empty() {
                "accesses static memory"
            } else {
                continue;
            };
            let outside: Vec<String> = code
                .callers(g)
                .iter()
                .filter(|c| !members.contains(c) && !private.contains(c))
                .take(3)
                .map(|&c| label(c))
                .collect();
            return Err(format!(
                "{} is called by the allocator's entry points and {holds}, but {} (an entry \
                 point inlined into its caller, or one wasmfix does not know: name it with \
                 --aligned-alloc, --free, …)",
                label(g),
                match (code.external.contains(&g), outside.is_empty()) {
                    (true, _) => "it is exported or in a table".to_string(),
                    (false, _) => format!("it is called by {} too", outside.join(", ")),
                }
            ));
        }
        // Their state, as malloc's and free's own above: the addresses both reach, now through
        // the private functions they call, growing memory or not.
        state = state_of(code, core, Follow::Only(&private))
            .intersection(&state_of(code, free, Follow::Only(&private)))
            .copied()
            .collect();
        through = true;
        if state.is_empty() {
            return Ok(Closed::Unknown(
                "malloc and free share no state at constant addresses, nor do the functions \
                 they call (position-independent code?)"
                    .into(),
            ));
        }
    }
    for (i, s) in code.shapes.iter().enumerate() {
        let f = code.imported + i as u32;
        if members.contains(&f) || private.contains(&f) {
            continue;
        }
        let indexed: &[u32] = if through { &s.static_offsets } else { &[] };
        if let Some(a) = s
            .addresses
            .iter()
            .chain(indexed)
            .find(|a| state.contains(a))
        {
            let outside: Vec<String> = code
                .callers(f)
                .iter()
                .filter(|c| !members.contains(c))
                .take(3)
                .map(|&c| label(c))
                .collect();
            return Err(format!(
                "{} uses the allocator's state (address {a:#x}) but is neither one of its entry \
                 points nor called only by them{} (an unrecognized allocator function, or one \
                 inlined into its caller)",
                label(f),
                match (code.external.contains(&f), outside.is_empty()) {
                    (true, _) => " (it is exported or in a table)".to_string(),
                    (false, false) => format!(" (called by {})", outside.join(", ")),
                    (false, true) => String::new(),
                }
            ));
        }
    }
    Ok(Closed::Checked {
        private: private.into_iter().collect(),
        state: state.len(),
        through,
        head_readers,
    })
}
