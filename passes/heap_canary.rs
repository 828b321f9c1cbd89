//! heap-canary — heap buffer overflows, double frees and uses after free stop the program with
//! a message instead of corrupting the allocator or reading what the next allocation put there.
//!
//! **The allocator** comes from the facts ([`crate::allocator`]): by name, by `--malloc`/`--free`
//! and the other role options, or, in stripped modules, by its code (dlmalloc from wasi-libc,
//! wasi-sdk and Emscripten; emmalloc), several independent facts agreeing and nothing else
//! using the allocator's internals. It is wrapped *in place*: the function that really
//! allocates (`dlmalloc`, or `emmalloc_memalign` behind emmalloc's `malloc`) and `free` keep
//! their indices but get wrapper bodies, and their original bodies move byte for byte to new
//! functions the wrappers call. Every call — from the program, from inside libc (`strdup`,
//! stdio), through the table or an export — therefore reaches a wrapper. `calloc`, `realloc`,
//! the aligned allocations, `posix_memalign` and `malloc_usable_size` get new bodies built on
//! the wrappers (their originals read the allocator's chunk headers, which no longer sit in
//! front of the blocks, so they are never called again). DWARF that gives the moved bodies and
//! other code one address range (binaryen's, one per compile unit) cannot follow the move: the
//! run is then refused, and under `--harden` made again without this pass, with a warning
//! (see `pipeline::rewrite_unchecked`).
//!
//! **Blocks.** A block of `n` bytes is allocated as `n + 20` bytes (more when aligned):
//!
//! ```text
//! [raw pointer][n][tag][head/link] q: n bytes [q ^ key2 (4 bytes, unaligned)]
//! ```
//!
//! `tag` is `q ^ key` while the block is allocated and `q ^ key ^ FREED` once freed. The word
//! before `q` is what dlmalloc keeps there for an allocated chunk — its size rounded up to 8,
//! plus the in-use bits 3 — so code that reads it (wasm-opt inlines dlmalloc's `calloc` into
//! its only caller, and that reads the in-use bits to decide whether to clear) sees an
//! ordinary in-use chunk; once the block is freed, the word chains the quarantine. `free` and `realloc` check the tag (freed: `wasmfix: double free of
//! block at 0x…`; anything else: `wasmfix: heap buffer overflow or invalid free …`) and the
//! redzone at exactly `q + n` (`wasmfix: heap buffer overflow: block of N bytes at 0x… written
//! past its end`). An overflow that stays in the allocator's rounding slack (28 bytes written
//! into a 16-byte block) is caught because the redzone sits at the requested size.
//!
//! **Use after free.** A freed block's payload is filled with [`POISON_BYTE`]: every aligned
//! word of it reads `0xfefefefe`, an address above any memory smaller than 4 GiB − 17 MiB, so
//! a pointer read out of a freed block traps at its first use (and under `--harden`, bounds can
//! name it: see [`POISON_RANGE`]). A block larger than `--poison-bytes` (default
//! [`DEFAULT_POISON_BYTES`]) is poisoned, and later checked, only in its first
//! `--poison-bytes` bytes and its last [`POISON_TAIL`]: for it, a pointer read from those
//! parts traps, and a write into them is found, as above; a read from the rest of it returns
//! what was there before the free, a write into the rest goes unnoticed, and a host pointer
//! into the rest is not recognized (`--check-host-pointers` finds a held block by the poison
//! at the pointer). Why: on the benchmark's Ruby workload, `(1..200000).map { … }` frees a
//! block of 6 KB or more per element (200 000 frees, 4.9 GB in all, 25 KB on average, most of
//! it never written), and poisoning and checking every byte cost 1.5× the run time
//! (docs/benchmarks.md); the reads and writes of a dangling pointer to a struct almost always
//! reach its first fields. `--poison-bytes all` poisons every byte. Blocks of custom
//! allocators (`--free-fn`) are always poisoned whole. The block then waits in a FIFO
//! quarantine of at most `--quarantine` bytes (default [`DEFAULT_QUARANTINE`]) before it
//! really goes back to the allocator, so nothing else is allocated there meanwhile. When it leaves the quarantine, and
//! for every block still in it when the program exits (`_start` returns or `proc_exit` is
//! called), a changed byte means somebody wrote after free: `wasmfix: heap use after free:
//! block of N bytes at 0x… written after it was freed`. `--heap-stress` checks the whole
//! quarantine at every allocation, so such a write shows at the next allocation.
//!
//! **Soundness.** Correct programs see the same results from the allocator except for
//! addresses (each block has 20 more bytes around it, and freed memory is reused later) and
//! `realloc`, which always moves the block (C allows it); `realloc(p, 0)` frees and returns 0,
//! as dlmalloc does. They never read freed memory, so its contents do not matter to them. The
//! quarantine holds freed memory back: peak memory grows by at most the quarantine size plus
//! the allocator's fragmentation. A double free is always recognized while the block is in the
//! quarantine; after that, only while the allocator has not reused the header.
//!
//! A module whose memory was snapshotted after initialization (Wizer, as ruby.wasm is) holds
//! blocks allocated before the wrappers existed: they sit in the data past `__heap_base` and
//! have no header. `free`, `realloc` and `malloc_usable_size` pass a block in that range that
//! lacks the tag to the real functions unchecked (`realloc` copies the requested size, bounded
//! by the memory, since the old size is unknown); such blocks are not quarantined.
//!
//! Every stop goes through [`stop`]. Report mode (`--harden-mode report`): each kind of failure
//! (double free, invalid free, overflow, a write after free, a host pointer into a freed block)
//! prints once and the program goes on; an overflowed block, or one written after it was freed,
//! is then released as usual; a double or invalid free is skipped (`check` returns -1: `free`
//! returns, `realloc` returns a fresh block, and `malloc_usable_size` 0), since the allocator
//! cannot be handed that pointer safely.
//!
//! Refuses (alone; `--harden` warns and skips instead): an allocator that cannot be found or
//! established (the facts' reason), allocator functions of unexpected types, and the memories
//! `refuse_unusual_memory` refuses.

use super::bulk::Bulk;
use super::{Pass, PassCx, PassReport};
use crate::allocator::{Allocator, Role, Selector};
use crate::diag::{Diagnostics, Message, OnError};
use crate::edit::{BodyCx, BodyRewriter, Edits};
use crate::module::Module;
use anyhow::{Result, bail};
use wasm_encoder::{BlockType, Instruction, MemArg, MemArgTarget, ValType};
use wasmparser::ValType::I32;

pub struct HeapCanary;

/// Options of heap-canary (`--quarantine`, `--heap-stress`, the allocator roles, custom
/// allocators, host pointers).
#[derive(Debug, Clone, Default)]
pub struct HeapOptions {
    /// Allocator functions named on the command line.
    pub allocator: crate::allocator::Manual,
    /// Bytes of freed blocks held back before they go back to the allocator (`None`: the
    /// default; 0: freed blocks go back to the allocator at once, unpoisoned).
    pub quarantine: Option<u32>,
    /// `--poison-bytes`: of a freed block larger than this, only the first this many bytes
    /// and the last [`POISON_TAIL`] are poisoned and checked (`None`: the default;
    /// `u32::MAX`: every byte).
    pub poison_bytes: Option<u32>,
    /// Check every block in the quarantine at every allocation (and run `collect_fn` before
    /// every custom allocation).
    pub stress: bool,
    /// `--alloc-fn`: allocation functions of a runtime that is not malloc (result: the block).
    pub alloc_fns: Vec<FnSpec>,
    /// `--free-fn`: their release functions (which argument is the block, which its size).
    pub free_fns: Vec<FnSpec>,
    /// `--collect-fn`: the runtime's collector, run before every custom allocation under
    /// `stress`.
    pub collect_fn: Option<Selector>,
    /// `--check-host-pointers`: imports whose i32 results, and exports whose i32 arguments,
    /// must not point into a released block.
    pub host_pointers: Vec<HostPointer>,
}

/// A function named on the command line with the positions of its pointer and size
/// arguments: `NAME|INDEX[:ptr=N][:size=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FnSpec {
    pub func: Selector,
    /// Which argument is the block (release functions; default 0).
    pub ptr: u32,
    /// Which argument is its size in bytes.
    pub size: Option<u32>,
}

impl std::str::FromStr for FnSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let func: Selector = parts.next().unwrap_or("").parse()?;
        let mut spec = FnSpec {
            func,
            ptr: 0,
            size: None,
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected ptr=N or size=N"))?;
            let n: u32 = value
                .parse()
                .map_err(|_| format!("`{part}`: {value} is not an argument position"))?;
            match key {
                "ptr" => spec.ptr = n,
                "size" => spec.size = Some(n),
                _ => return Err(format!("`{part}`: expected ptr=N or size=N")),
            }
        }
        Ok(spec)
    }
}

/// What `--check-host-pointers` checks: an import's i32 results (`MODULE.NAME`) or an export's
/// i32 arguments (`export:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPointer {
    Import { module: String, name: String },
    Export(String),
}

impl std::str::FromStr for HostPointer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("export:") {
            return Ok(HostPointer::Export(name.to_string()));
        }
        match s.split_once('.') {
            Some((module, name)) if !module.is_empty() && !name.is_empty() => {
                Ok(HostPointer::Import {
                    module: module.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "`{s}`: expected MODULE.NAME (an import) or export:NAME (an export)"
            )),
        }
    }
}

impl std::fmt::Display for HostPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPointer::Import { module, name } => write!(f, "{module}.{name}"),
            HostPointer::Export(name) => write!(f, "export:{name}"),
        }
    }
}

/// Freed payloads are filled with this byte.
pub const POISON_BYTE: u8 = 0xfe;
/// A 32-bit word read from a freed block.
pub const POISON_WORD: u32 = 0xfefe_fefe;
/// Eight bytes of poison.
const POISON_I64: i64 = (POISON_WORD as u64 | ((POISON_WORD as u64) << 32)) as i64;
/// Addresses a pointer read from a freed block (plus or minus 16 MiB of field offsets) can
/// reach: `[0xfe000000, 2^32)`. No memory below 4 GiB − 32 MiB reaches them; bounds can check
/// the null page and this range with one unsigned comparison of `address + 0x02000000`.
pub const POISON_RANGE: (u32, u64) = (0xfe00_0000, 1 << 32);
/// The default quarantine: 4 MiB of freed blocks.
pub const DEFAULT_QUARANTINE: u32 = 4 << 20;
/// The default `--poison-bytes`: a freed block's first 256 bytes (and its last
/// [`POISON_TAIL`]) are poisoned and checked.
pub const DEFAULT_POISON_BYTES: u32 = 256;
/// The least `--poison-bytes`: the first words of every freed block are always poisoned.
pub const MIN_POISON_BYTES: u32 = 16;
/// Bytes at the end of a block larger than `--poison-bytes` that are poisoned and checked too.
pub const POISON_TAIL: i32 = 8;

const ALLOCATED_KEY_FLIP: i32 = 0;
/// Xored into the tag when a block is freed.
const FREED: i32 = 0xf4ee_f4ee_u32 as i32;
/// Header bytes before each block, and redzone bytes after it.
const HEADER: i32 = 16;
const REDZONE: i32 = 4;
/// Larger requests fail (return 0) instead of wrapping around with the added bytes.
const MAX_REQUEST: i32 = 0x7fff_0000;
/// Blocks of custom allocators the ring holds at most (a power of two), and its entry size.
const RING_ENTRIES: i32 = 4096;
const RING_ENTRY: i32 = 32;
/// The first word of a block the ring holds is `RING_TAG | slot`: an address in
/// [`POISON_RANGE`] too, and it finds the block's entry without a search.
const RING_TAG: i32 = 0xfe00_0000_u32 as i32;

impl Pass for HeapCanary {
    fn name(&self) -> &'static str {
        "heap-canary"
    }

    fn description(&self) -> &'static str {
        "redzones around malloc blocks checked at free/realloc; double frees; freed blocks \
         poisoned and quarantined (use after free) (--harden)"
    }

    fn run(&self, cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
        let facts = cx.facts();
        if let Some(done) = facts.applied.get("heap-canary") {
            return Ok(PassReport {
                pass: "heap-canary",
                summary: format!("already applied by an earlier wasmfix run ({done})"),
                warnings: Vec::new(),
                details: serde_json::json!({ "wrapped": [] }),
            });
        }
        match wrap(cx) {
            Ok(r) => Ok(r),
            Err(e) if cx.options.harden => Ok(not_applied(&crate::pipeline::one_line(&e))),
            Err(e) => Err(e),
        }
    }
}

/// The report of a `--harden` run in which heap-canary could not apply, for reason `why`: a
/// warning, and the other passes still apply.
pub fn not_applied(why: &str) -> PassReport {
    PassReport {
        pass: "heap-canary",
        summary: format!("not applied: {why}"),
        warnings: vec![format!("heap blocks are not checked: {why}")],
        details: serde_json::json!({ "wrapped": [] }),
    }
}

/// The allocator: the facts' own, or found again with the user's choices.
fn allocator(cx: &PassCx<'_, '_, '_>) -> Result<Allocator> {
    let facts = cx.facts();
    let manual = &cx.options.heap.allocator;
    let found = if manual.is_empty() {
        facts.allocator(cx.module).clone()
    } else {
        crate::allocator::find(cx.module, &facts.function_names, manual)
    };
    found.map_err(|e| anyhow::anyhow!(e))
}

fn wrap(cx: &mut PassCx<'_, '_, '_>) -> Result<PassReport> {
    let m = cx.module;
    if m.memories.is_empty() {
        bail!("the module has no memory");
    }
    super::refuse_unusual_memory(m)?;
    let alloc = allocator(cx)?;
    let malloc = alloc.malloc();
    let free = alloc.free();

    // A memory snapshot (Wizer, as in ruby.wasm) records the blocks its initializer allocated
    // as data past `__heap_base`; those have no header. Without `__heap_base` every address
    // below the end of the data may be such a block.
    // stack-first earlier in this pipeline moved the data and `__heap_base` up.
    let facts = cx.facts();
    let shift = cx.edits.stack_relocated.unwrap_or(0);
    let data_high = facts.data.as_ref().map_or(0, |d| d.high + shift);
    let heap_base = facts.heap_base.as_ref().map(|h| h.value + shift);
    let snapshot = match heap_base {
        Some(base) if data_high > base => Some((base, data_high)),
        Some(_) => None,
        None if data_high > 0 => Some((0, data_high)),
        None => None,
    };
    let snapshot = snapshot.map(|(lo, hi)| {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX) as i32;
        (clamp(lo), clamp(hi))
    });
    let quarantine = cx.options.heap.quarantine.unwrap_or(DEFAULT_QUARANTINE);
    let poison_bytes = cx
        .options
        .heap
        .poison_bytes
        .unwrap_or(DEFAULT_POISON_BYTES)
        .max(MIN_POISON_BYTES);
    let stress = cx.options.heap.stress;
    let opts = &cx.options.heap;
    let custom = custom_functions(m, &facts.function_names, opts, &alloc)?;
    let bulk = Bulk::new(&cx.features());
    let edits = &mut *cx.edits;
    let key = crate::facts::module_hash(m.bytes) | 1;
    let key2 = key.rotate_left(13) ^ 0x5bd1_e995;

    // The raw allocation: the moved body of the allocation function, or of the aligned core.
    let (raw, real_malloc) = match alloc.aligned_core {
        Some(core) => {
            let real = edits.move_body(m, core, "wasmfix:real_memalign");
            (RawAlloc::Aligned(real), None)
        }
        None => {
            let real = edits.move_body(m, malloc, "wasmfix:real_malloc");
            (RawAlloc::Malloc(real), Some(real))
        }
    };
    let real_free = edits.move_body(m, free, "wasmfix:real_free");
    let mode = cx.options.on_error;
    let mut h = Helpers::new(
        m,
        edits,
        (key as i32, key2 as i32),
        raw,
        real_free,
        bulk,
        mode,
    );
    h.snapshot = snapshot;
    h.poison_bytes = poison_bytes;
    let frees: Vec<CustomFree> = custom
        .frees
        .iter()
        .map(|&(func, ptr, size)| CustomFree {
            func,
            real: edits.move_body(m, func, "wasmfix:real_release"),
            arity: m.func_sig(func).map_or(0, |t| t.params().len() as u32),
            ptr,
            size,
        })
        .collect();
    h.add_quarantine(m, edits, quarantine, &frees);
    if stress {
        h.stress = h.verify_all;
    }
    if let Some(ring) = &h.ring {
        for (f, code) in &ring.releases {
            edits.replace_body(*f, &[(3, ValType::I32)], code);
        }
    }
    let custom_stress = match (stress, custom.collect) {
        (true, collect) => Some(h.custom_stress(m, edits, collect)),
        (false, _) => None,
    };
    for &f in &custom.allocs {
        let real = edits.move_body(m, f, "wasmfix:real_allocate");
        let code = h.custom_alloc(m, f, real, custom_stress);
        edits.replace_body(f, &[(1, ValType::I32)], &code);
    }
    let host_checks = h.check_host_pointers(m, edits, &opts.host_pointers)?;

    edits.replace_body(malloc, &[(2, ValType::I32)], &h.malloc());
    edits.replace_body(free, &[(1, ValType::I32)], &h.free());
    for f in &alloc.functions {
        let (locals, code): (Vec<(u32, ValType)>, Vec<Instruction<'static>>) = match f.role {
            Role::Malloc | Role::Free => continue,
            Role::Calloc => {
                let code = h.calloc(m, edits, malloc);
                (vec![(1, ValType::I64), (1, ValType::I32)], code)
            }
            Role::Realloc => {
                let code = h.realloc(m, edits, malloc, free);
                (vec![(2, ValType::I32)], code)
            }
            Role::Aligned => (vec![(2, ValType::I32)], h.aligned(malloc)),
            Role::PosixMemalign => (vec![(1, ValType::I32)], h.posix_memalign(malloc)),
            Role::UsableSize => {
                let real = edits.move_body(m, f.func, "wasmfix:real_malloc_usable_size");
                (vec![], h.usable_size(real))
            }
        };
        edits.replace_body(f.func, &locals, &code);
    }
    let exit_hooks = h.check_at_exit(m, edits);
    let wrapped: Vec<String> = alloc
        .functions
        .iter()
        .map(|f| format!("{} {}", f.role.c_name(), f.label))
        .collect();
    let poison_note = if h.poison_capped() {
        format!(": the first {poison_bytes} bytes and the last {POISON_TAIL} of larger blocks")
    } else {
        String::new()
    };
    let quarantine_note = if quarantine == 0 {
        "no quarantine".to_string()
    } else {
        format!(
            "quarantine of {} bytes (peak memory grows by up to that much plus 20 bytes per block)",
            quarantine
        )
    };
    // Whether freed blocks hold POISON_WORD (malloc's with a quarantine, custom releases
    // always): bounds names an access through it (see POISON_RANGE).
    let poisons = quarantine > 0 || !custom.frees.is_empty();
    edits.record_applied(
        "heap-canary",
        serde_json::json!({ "wrapped": wrapped, "quarantine": quarantine, "poisons": poisons }),
    );
    Ok(PassReport {
        pass: "heap-canary",
        summary: format!(
            "wrapped {}{} in place: 16-byte headers and {REDZONE}-byte redzones checked at free \
             and realloc; freed blocks poisoned (0x{POISON_WORD:08x}{poison_note}), {quarantine_note}{}",
            alloc
                .family
                .map_or(String::new(), |f| format!("{} ", f.name())),
            wrapped.join(", "),
            if stress {
                "; --heap-stress: the quarantine is checked at every allocation"
            } else {
                ""
            }
        ) + &custom_note(&custom, &host_checks),
        warnings: Vec::new(),
        details: serde_json::json!({
            "wrapped": wrapped,
            "family": alloc.family.map(|f| f.name()),
            "functions": alloc.functions,
            "evidence": alloc.evidence,
            "real_malloc": real_malloc,
            "real_free": real_free,
            "quarantine_bytes": quarantine,
            "poison_bytes": if h.poison_capped() { Some(poison_bytes) } else { None },
            "stress": stress,
            "poison_word": format!("0x{POISON_WORD:08x}"),
            "bulk_memory": h.bulk.allowed(),
            "exit_checks": exit_hooks,
            "alloc_fns": custom.allocs,
            "free_fns": custom.frees.iter().map(|f| f.0).collect::<Vec<_>>(),
            "collect_fn": custom.collect,
            "host_pointer_checks": host_checks,
        }),
    })
}

/// Ends a message begun with `Message::start(.., mode)`: every heap-canary stop goes through
/// here. Stop mode traps; report mode prints once per kind and goes on, returning [`SKIP`] from
/// the function when `skip` (a block that must not be handed to the allocator).
fn stop(
    m: &Module<'_>,
    edits: &mut Edits<'_>,
    message: Message,
    mode: OnError,
    skip: bool,
) -> Vec<Instruction<'static>> {
    let code = message.end(m, edits, mode);
    if mode == OnError::Stop {
        return code;
    }
    let mut code = match Diagnostics::once_flag(m, edits) {
        Some(flag) => flag.guard(code),
        None => code,
    };
    if skip {
        code.extend([I::I32Const(SKIP), I::Return]);
    }
    code
}

/// What `check` returns in report mode for a block that must not be freed.
const SKIP: i32 = -1;

/// The defined functions whose bodies (not replaced by an earlier pass) call, directly, a
/// function `target` accepts: the sites heap-canary hooks after calls. One walk over the code.
fn direct_callers(m: &Module<'_>, edits: &Edits<'_>, target: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut callers = Vec::new();
    for (i, body) in m.bodies.iter().enumerate() {
        let f = m.imported_funcs + i as u32;
        if edits.replaced_bodies.contains_key(&f) {
            continue;
        }
        let Ok(ops) = body.get_operators_reader() else {
            continue;
        };
        let calls = |op: &wasmparser::Operator<'_>| matches!(op, wasmparser::Operator::Call { function_index } if target(*function_index));
        if ops.into_iter().map_while(Result::ok).any(|op| calls(&op)) {
            callers.push(f);
        }
    }
    callers
}

/// Where the wrappers get raw memory from.
#[derive(Clone, Copy)]
enum RawAlloc {
    /// `real_malloc(size)`
    Malloc(u32),
    /// `real_memalign(16, size)` (emmalloc: `malloc` only passes a constant alignment)
    Aligned(u32),
}

/// The generated helpers the wrappers share.
struct Helpers {
    raw: RawAlloc,
    real_free: u32,
    /// mark(raw, q, n) -> q: writes the header and the redzone.
    mark: u32,
    /// check(q) -> n: checks the tag and the redzone; stops on a failure.
    check: u32,
    /// release(q, n): poisons and quarantines a checked block (or frees it at once).
    release: u32,
    /// verify_all(): checks every block in the quarantine.
    verify_all: Option<u32>,
    /// Called at every allocation (--heap-stress).
    stress: Option<u32>,
    /// The tag key (`q ^ key` at `q - 8`).
    key: i32,
    /// `[start, end)` of a memory snapshot's heap, whose blocks may have no header (see
    /// `foreign`).
    snapshot: Option<(i32, i32)>,
    /// `--poison-bytes`: a freed block larger than this has only its first this many bytes
    /// and its last [`POISON_TAIL`] poisoned (`u32::MAX`: all of every block).
    poison_bytes: u32,
    bulk: Bulk,
    /// `--harden-mode`: stop, or report each kind of failure once and go on (see [`stop`]).
    mode: OnError,
    globals: Option<Globals>,
    /// The ring of custom allocators' blocks.
    ring: Option<Ring>,
}

/// The quarantine's globals other helpers read.
#[derive(Clone, Copy)]
struct Globals {
    /// The oldest block in the quarantine (0: empty).
    head: u32,
}

/// A `--free-fn`: its original index, where its body moved, its parameter count and the
/// positions of the block and its size.
struct CustomFree {
    func: u32,
    real: u32,
    arity: u32,
    ptr: u32,
    size: u32,
}

/// The custom allocators' ring and its helpers.
struct Ring {
    count: u32,
    /// evict(): the oldest entry to its real release.
    evict: u32,
    /// find(x) -> entry or 0.
    find: u32,
    /// verify_all()
    verify_all: u32,
    /// Each free-fn's new body (locals: ptr, size, entry).
    releases: Vec<(u32, Vec<Instruction<'static>>)>,
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        target: MemArgTarget::Memory(0),
        ordering: None,
    }
}

use Instruction as I;

impl Helpers {
    fn new(
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        (key, key2): (i32, i32),
        raw: RawAlloc,
        real_free: u32,
        bulk: Bulk,
        mode: OnError,
    ) -> Helpers {
        let (rawp, q, n, h) = (0, 1, 2, 3);
        let mark = edits.add_helper(
            m,
            "wasmfix:heap_mark",
            (&[I32, I32, I32], &[I32]),
            &[(1, ValType::I32)],
            &[
                I::LocalGet(q),
                I::I32Const(HEADER),
                I::I32Sub,
                I::LocalTee(h),
                I::LocalGet(rawp),
                I::I32Store(mem(0, 2)),
                I::LocalGet(h),
                I::LocalGet(n),
                I::I32Store(mem(4, 2)),
                I::LocalGet(h),
                I::LocalGet(q),
                I::I32Const(key ^ ALLOCATED_KEY_FLIP),
                I::I32Xor,
                I::I32Store(mem(8, 2)),
                // dlmalloc's head of an in-use chunk of this size: ((n + 4 + 7) & -8) | 3.
                I::LocalGet(h),
                I::LocalGet(n),
                I::I32Const(11),
                I::I32Add,
                I::I32Const(-8),
                I::I32And,
                I::I32Const(3),
                I::I32Or,
                I::I32Store(mem(12, 2)),
                I::LocalGet(q),
                I::LocalGet(n),
                I::I32Add,
                I::LocalGet(q),
                I::I32Const(key2),
                I::I32Xor,
                I::I32Store(mem(0, 0)),
                I::LocalGet(q),
                I::End,
            ],
        );
        let (q, h, n) = (0, 1, 2);
        let block = || vec![I::LocalGet(q)];
        let double = Message::start(m, edits, mode)
            .text(m, edits, "wasmfix: double free of block at ")
            .hex(m, edits, block())
            .text(m, edits, "\n");
        let mut double = stop(m, edits, double, mode, true);
        let invalid = Message::start(m, edits, mode)
            .text(
                m,
                edits,
                "wasmfix: heap buffer overflow or invalid free: the header of block ",
            )
            .hex(m, edits, block())
            .text(
                m,
                edits,
                " is overwritten, or it was not allocated by malloc\n",
            );
        let mut invalid = stop(m, edits, invalid, mode, true);
        let overflow = Message::start(m, edits, mode)
            .text(m, edits, "wasmfix: heap buffer overflow: block of ")
            .number(m, edits, vec![I::LocalGet(n)])
            .text(m, edits, " bytes at ")
            .hex(m, edits, block())
            .text(m, edits, " written past its end\n");
        let mut overflow = stop(m, edits, overflow, mode, false);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::LocalTee(h),
            I::I32Load(mem(8, 2)),
            I::LocalGet(q),
            I::I32Const(key ^ FREED),
            I::I32Xor,
            I::I32Eq,
            I::If(BlockType::Empty),
        ];
        code.append(&mut double);
        code.extend([
            I::End,
            I::LocalGet(h),
            I::I32Load(mem(8, 2)),
            I::LocalGet(q),
            I::I32Const(key),
            I::I32Xor,
            I::I32Ne,
            I::If(BlockType::Empty),
        ]);
        code.append(&mut invalid);
        code.extend([
            I::End,
            I::LocalGet(h),
            I::I32Load(mem(4, 2)),
            I::LocalSet(n),
            I::LocalGet(q),
            I::LocalGet(n),
            I::I32Add,
            I::I32Load(mem(0, 0)),
            I::LocalGet(q),
            I::I32Const(key2),
            I::I32Xor,
            I::I32Ne,
            I::If(BlockType::Empty),
        ]);
        code.append(&mut overflow);
        code.extend([I::End, I::LocalGet(n), I::End]);
        let check = edits.add_helper(
            m,
            "wasmfix:heap_check",
            (&[I32], &[I32]),
            &[(2, ValType::I32)],
            &code,
        );
        Helpers {
            raw,
            real_free,
            mark,
            check,
            release: 0,
            verify_all: None,
            stress: None,
            key,
            snapshot: None,
            poison_bytes: u32::MAX,
            bulk,
            globals: None,
            ring: None,
            mode,
        }
    }

    /// Whether a large freed block is poisoned only in part (`--poison-bytes`).
    fn poison_capped(&self) -> bool {
        self.poison_bytes < MAX_REQUEST as u32
    }

    /// `if (n > poison_bytes) { tail }` for a block of `n` (a local) bytes: what only a block
    /// above the cap needs (its last bytes); nothing when every byte is poisoned.
    fn above_cap<const K: usize>(
        &self,
        n: u32,
        tail: [Instruction<'static>; K],
    ) -> Vec<Instruction<'static>> {
        if !self.poison_capped() {
            return Vec::new();
        }
        let mut code = vec![
            I::LocalGet(n),
            I::I32Const(self.poison_bytes as i32),
            I::I32GtU,
            I::If(BlockType::Empty),
        ];
        code.extend(tail);
        code.push(I::End);
        code
    }

    /// Leaves how many bytes from the start of a freed block of `n` (a local) bytes are
    /// poisoned: `min(n, poison_bytes)`.
    fn poisoned_prefix(&self, n: u32) -> Vec<Instruction<'static>> {
        if !self.poison_capped() {
            return vec![I::LocalGet(n)];
        }
        vec![
            I::LocalGet(n),
            I::I32Const(self.poison_bytes as i32),
            I::LocalGet(n),
            I::I32Const(self.poison_bytes as i32),
            I::I32LtU,
            I::Select,
        ]
    }

    /// `size` (instructions leaving one i32) bytes of raw memory, or 0.
    fn raw_alloc(&self, size: Vec<Instruction<'static>>) -> Vec<Instruction<'static>> {
        let mut code = Vec::new();
        match self.raw {
            RawAlloc::Malloc(f) => {
                code.extend(size);
                code.push(I::Call(f));
            }
            RawAlloc::Aligned(f) => {
                code.push(I::I32Const(HEADER));
                code.extend(size);
                code.push(I::Call(f));
            }
        }
        code
    }

    /// The quarantine's globals and helpers: `release(q, n)`, `evict()`, `verify(q, n)` and
    /// `verify_all()`, and the ring that holds blocks of custom allocators (`--free-fn`). With
    /// `limit` 0 a freed block goes back at once, unpoisoned.
    fn add_quarantine(
        &mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        limit: u32,
        custom: &[CustomFree],
    ) {
        let head = edits.add_i32_global(m, true, 0);
        let tail = edits.add_i32_global(m, true, 0);
        let bytes = edits.add_i32_global(m, true, 0);
        let frees = edits.add_i32_global(m, true, 0);
        edits.name_global(head, "wasmfix:quarantine_head");
        edits.name_global(tail, "wasmfix:quarantine_tail");
        edits.name_global(bytes, "wasmfix:quarantine_bytes");
        edits.name_global(frees, "wasmfix:releases");
        self.globals = Some(Globals { head });

        // verify(q, n, from, to): bytes [from, to) of the payload of block q (n bytes) still
        // hold the poison.
        let (q, n, from, to, p, end) = (0, 1, 2, 3, 4, 5);
        let written = Message::start(m, edits, self.mode)
            .text(m, edits, "wasmfix: heap use after free: block of ")
            .number(m, edits, vec![I::LocalGet(n)])
            .text(m, edits, " bytes at ")
            .hex(m, edits, vec![I::LocalGet(q)])
            .text(m, edits, " written after it was freed\n");
        let mut written = stop(m, edits, written, self.mode, false);
        let mut code = vec![
            I::LocalGet(q),
            I::LocalGet(from),
            I::I32Add,
            I::LocalSet(p),
            I::LocalGet(q),
            I::LocalGet(to),
            I::I32Add,
            I::LocalSet(end),
            I::Block(BlockType::Empty),
            // 32 bytes at a time while they fit: four words xored with the pattern, or-ed.
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(end),
            I::LocalGet(p),
            I::I32Sub,
            I::I32Const(32),
            I::I32LtU,
            I::BrIf(1),
        ];
        for k in 0..4u64 {
            code.extend([
                I::LocalGet(p),
                I::I64Load(mem(8 * k, 0)),
                I::I64Const(POISON_I64),
                I::I64Xor,
            ]);
            if k > 0 {
                code.push(I::I64Or);
            }
        }
        code.extend([
            I::I64Const(0),
            I::I64Ne,
            I::BrIf(2),
            I::LocalGet(p),
            I::I32Const(32),
            I::I32Add,
            I::LocalSet(p),
            I::Br(0),
            I::End,
            I::End,
            // Then byte by byte.
            I::Loop(BlockType::Empty),
            I::LocalGet(p),
            I::LocalGet(end),
            I::I32Eq,
            I::If(BlockType::Empty),
            I::Return,
            I::End,
            I::LocalGet(p),
            I::I32Load8U(mem(0, 0)),
            I::I32Const(POISON_BYTE as i32),
            I::I32Ne,
            I::BrIf(1),
            I::LocalGet(p),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(p),
            I::Br(0),
            I::End,
            I::End,
        ]);
        code.append(&mut written);
        code.push(I::End);
        let verify = edits.add_helper(
            m,
            "wasmfix:heap_verify",
            (&[I32, I32, I32, I32], &[]),
            &[(2, ValType::I32)],
            &code,
        );

        if !custom.is_empty() {
            self.ring = Some(self.add_ring(m, edits, limit, custom, frees, verify));
        }

        // verify_block(q, n): what `release` poisoned in block q of n bytes: all of it, or,
        // above `poison_bytes`, its first `poison_bytes` and its last POISON_TAIL bytes.
        let (q, n) = (0, 1);
        let mut code = vec![I::LocalGet(q), I::LocalGet(n), I::I32Const(0)];
        code.extend(self.poisoned_prefix(n));
        code.push(I::Call(verify));
        code.extend(self.above_cap(
            n,
            [
                I::LocalGet(q),
                I::LocalGet(n),
                I::LocalGet(n),
                I::I32Const(POISON_TAIL),
                I::I32Sub,
                I::LocalGet(n),
                I::Call(verify),
            ],
        ));
        code.push(I::End);
        let verify = edits.add_helper(
            m,
            "wasmfix:heap_verify_block",
            (&[I32, I32], &[]),
            &[],
            &code,
        );

        // verify_all(): every block in the quarantine, oldest first, then the ring's.
        let q = 0;
        let mut code = vec![
            I::GlobalGet(head),
            I::LocalSet(q),
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(q),
            I::I32Eqz,
            I::BrIf(1),
            I::LocalGet(q),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(4, 2)),
            I::Call(verify),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(12, 2)),
            I::LocalSet(q),
            I::Br(0),
            I::End,
            I::End,
        ];
        if let Some(ring) = &self.ring {
            code.push(I::Call(ring.verify_all));
        }
        code.push(I::End);
        let verify_all = edits.add_helper(
            m,
            "wasmfix:heap_verify_quarantine",
            (&[], &[]),
            &[(1, ValType::I32)],
            &code,
        );

        // evict(): the oldest block leaves the quarantine, checked, to the real free.
        let (q, hd) = (0, 1);
        let evict = edits.add_helper(
            m,
            "wasmfix:heap_evict",
            (&[], &[]),
            &[(2, ValType::I32)],
            &[
                I::GlobalGet(head),
                I::LocalTee(q),
                I::I32Const(HEADER),
                I::I32Sub,
                I::LocalTee(hd),
                I::I32Load(mem(12, 2)),
                I::GlobalSet(head),
                I::GlobalGet(head),
                I::I32Eqz,
                I::If(BlockType::Empty),
                I::I32Const(0),
                I::GlobalSet(tail),
                I::End,
                I::GlobalGet(bytes),
                I::LocalGet(hd),
                I::I32Load(mem(4, 2)),
                I::I32Const(HEADER + REDZONE),
                I::I32Add,
                I::I32Sub,
                I::GlobalSet(bytes),
                I::LocalGet(q),
                I::LocalGet(hd),
                I::I32Load(mem(4, 2)),
                I::Call(verify),
                I::LocalGet(hd),
                I::I32Load(mem(0, 2)),
                I::Call(self.real_free),
                I::End,
            ],
        );

        // release(q, n): tag freed, count, poison, append; evict while over the limit.
        let (q, n, hd) = (0, 1, 2);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::LocalTee(hd),
            I::LocalGet(q),
            I::I32Const(self.key ^ FREED),
            I::I32Xor,
            I::I32Store(mem(8, 2)),
            I::GlobalGet(frees),
            I::I32Const(1),
            I::I32Add,
            I::GlobalSet(frees),
            // The release's number replaces the (checked) redzone: `freed at release #N`.
            I::LocalGet(q),
            I::LocalGet(n),
            I::I32Add,
            I::GlobalGet(frees),
            I::I32Store(mem(0, 0)),
        ];
        if limit == 0 {
            code.extend([
                I::LocalGet(hd),
                I::I32Load(mem(0, 2)),
                I::Call(self.real_free),
                I::End,
            ]);
        } else {
            code.extend([I::LocalGet(q), I::I32Const(POISON_BYTE as i32)]);
            code.extend(self.poisoned_prefix(n));
            code.push(self.bulk.fill(m, edits));
            code.extend(self.above_cap(
                n,
                [
                    I::LocalGet(q),
                    I::LocalGet(n),
                    I::I32Add,
                    I::I32Const(POISON_TAIL),
                    I::I32Sub,
                    I::I64Const(POISON_I64),
                    I::I64Store(mem(0, 0)),
                ],
            ));
            code.extend([
                I::LocalGet(hd),
                I::I32Const(0),
                I::I32Store(mem(12, 2)),
                I::GlobalGet(tail),
                I::If(BlockType::Empty),
                I::GlobalGet(tail),
                I::I32Const(HEADER),
                I::I32Sub,
                I::LocalGet(q),
                I::I32Store(mem(12, 2)),
                I::Else,
                I::LocalGet(q),
                I::GlobalSet(head),
                I::End,
                I::LocalGet(q),
                I::GlobalSet(tail),
                I::GlobalGet(bytes),
                I::LocalGet(n),
                I::I32Const(HEADER + REDZONE),
                I::I32Add,
                I::I32Add,
                I::GlobalSet(bytes),
                I::Block(BlockType::Empty),
                I::Loop(BlockType::Empty),
                I::GlobalGet(bytes),
                I::I32Const(limit as i32),
                I::I32LeU,
                I::BrIf(1),
                I::Call(evict),
                I::Br(0),
                I::End,
                I::End,
                I::End,
            ]);
        }
        self.release = edits.add_helper(
            m,
            "wasmfix:heap_release",
            (&[I32, I32], &[]),
            &[(1, ValType::I32)],
            &code,
        );
        self.verify_all = (limit > 0).then_some(verify_all);
    }

    /// The ring of blocks released by custom allocators (`--free-fn`): [`RING_ENTRIES`]
    /// entries `[pointer][size][release #][which free-fn][its arguments ×4]` in memory from
    /// the real allocation function, taken at the first release.
    fn add_ring(
        &mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        limit: u32,
        custom: &[CustomFree],
        frees: u32,
        verify: u32,
    ) -> Ring {
        let base = edits.add_i32_global(m, true, 0);
        let start = edits.add_i32_global(m, true, 0);
        let count = edits.add_i32_global(m, true, 0);
        let bytes = edits.add_i32_global(m, true, 0);
        edits.name_global(base, "wasmfix:ring");
        edits.name_global(start, "wasmfix:ring_start");
        edits.name_global(count, "wasmfix:ring_count");
        edits.name_global(bytes, "wasmfix:ring_bytes");
        // The address of entry `start + i` (`i`: instructions leaving one i32).
        let entry_at = |i: Vec<Instruction<'static>>| {
            let mut code = vec![I::GlobalGet(base), I::GlobalGet(start)];
            code.extend(i);
            code.extend([
                I::I32Add,
                I::I32Const(RING_ENTRIES - 1),
                I::I32And,
                I::I32Const(RING_ENTRY),
                I::I32Mul,
                I::I32Add,
            ]);
            code
        };

        // ring() -> base: the ring's memory, taken on first use (0 when there is none).
        let mut code = vec![I::GlobalGet(base), I::I32Eqz, I::If(BlockType::Empty)];
        code.extend(self.raw_alloc(vec![I::I32Const(RING_ENTRIES * RING_ENTRY)]));
        code.extend([I::GlobalSet(base), I::End, I::GlobalGet(base), I::End]);
        let ring = edits.add_helper(m, "wasmfix:ring", (&[], &[I32]), &[], &code);

        // check(e, slot): the block of entry `e` (in ring slot `slot`) still holds the
        // poison; its first word, when it has one, holds `TAG | slot`.
        let (e, slot) = (0, 1);
        let check = edits.add_helper(
            m,
            "wasmfix:ring_check",
            (&[I32, I32], &[]),
            &[],
            &[
                I::LocalGet(e),
                I::I32Load(mem(0, 2)),
                I::LocalGet(e),
                I::I32Load(mem(4, 2)),
                I::LocalGet(e),
                I::I32Load(mem(4, 2)),
                I::I32Const(4),
                I::I32GeU,
                I::If(BlockType::Result(ValType::I32)),
                I::LocalGet(e),
                I::I32Load(mem(0, 2)),
                I::I32Load(mem(0, 0)),
                I::LocalGet(slot),
                I::I32Const(RING_TAG),
                I::I32Or,
                I::I32Eq,
                I::I32Const(2),
                I::I32Shl,
                I::Else,
                I::I32Const(0),
                I::End,
                I::LocalGet(e),
                I::I32Load(mem(4, 2)),
                I::Call(verify),
                I::End,
            ],
        );

        // evict(): the oldest entry, checked, to its real release function.
        let e = 0;
        let mut code = entry_at(vec![I::I32Const(0)]);
        code.extend([
            I::LocalTee(e),
            I::GlobalGet(start),
            I::Call(check),
            I::GlobalGet(start),
            I::I32Const(1),
            I::I32Add,
            I::I32Const(RING_ENTRIES - 1),
            I::I32And,
            I::GlobalSet(start),
            I::GlobalGet(count),
            I::I32Const(1),
            I::I32Sub,
            I::GlobalSet(count),
            I::GlobalGet(bytes),
            I::LocalGet(e),
            I::I32Load(mem(4, 2)),
            I::I32Sub,
            I::GlobalSet(bytes),
        ]);
        for (k, c) in custom.iter().enumerate() {
            code.extend([
                I::LocalGet(e),
                I::I32Load(mem(12, 2)),
                I::I32Const(k as i32),
                I::I32Eq,
                I::If(BlockType::Empty),
            ]);
            for i in 0..c.arity {
                code.extend([I::LocalGet(e), I::I32Load(mem(16 + 4 * i as u64, 2))]);
            }
            code.extend([I::Call(c.real), I::Return, I::End]);
        }
        code.push(I::End);
        let evict = edits.add_helper(
            m,
            "wasmfix:ring_evict",
            (&[], &[]),
            &[(1, ValType::I32)],
            &code,
        );

        // find(x) -> entry: the entry whose block holds address x, or 0.
        let (x, i, e) = (0, 1, 2);
        let mut code = vec![
            I::I32Const(0),
            I::LocalSet(i),
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(i),
            I::GlobalGet(count),
            I::I32GeU,
            I::BrIf(1),
        ];
        code.extend(entry_at(vec![I::LocalGet(i)]));
        code.extend([
            I::LocalSet(e),
            // x - pointer < max(size, 1)
            I::LocalGet(x),
            I::LocalGet(e),
            I::I32Load(mem(0, 2)),
            I::I32Sub,
            I::LocalGet(e),
            I::I32Load(mem(4, 2)),
            I::I32Const(1),
            I::LocalGet(e),
            I::I32Load(mem(4, 2)),
            I::I32Const(1),
            I::I32GtU,
            I::Select,
            I::I32LtU,
            I::If(BlockType::Empty),
            I::LocalGet(e),
            I::Return,
            I::End,
            I::LocalGet(i),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(i),
            I::Br(0),
            I::End,
            I::End,
            I::I32Const(0),
            I::End,
        ]);
        let find = edits.add_helper(
            m,
            "wasmfix:ring_find",
            (&[I32], &[I32]),
            &[(2, ValType::I32)],
            &code,
        );

        // verify_all(): every entry, oldest first.
        let i = 0;
        let mut code = vec![
            I::I32Const(0),
            I::LocalSet(i),
            I::Block(BlockType::Empty),
            I::Loop(BlockType::Empty),
            I::LocalGet(i),
            I::GlobalGet(count),
            I::I32GeU,
            I::BrIf(1),
        ];
        code.extend(entry_at(vec![I::LocalGet(i)]));
        code.extend([
            I::GlobalGet(start),
            I::LocalGet(i),
            I::I32Add,
            I::I32Const(RING_ENTRIES - 1),
            I::I32And,
            I::Call(check),
            I::LocalGet(i),
            I::I32Const(1),
            I::I32Add,
            I::LocalSet(i),
            I::Br(0),
            I::End,
            I::End,
            I::End,
        ]);
        let verify_all = edits.add_helper(
            m,
            "wasmfix:ring_verify",
            (&[], &[]),
            &[(1, ValType::I32)],
            &code,
        );

        // Each free-fn's wrapper: poison, remember, release the oldest beyond the limits.
        let mut releases = Vec::new();
        for (k, c) in custom.iter().enumerate() {
            let args = c.arity;
            let (ptr, size, e) = (args, args + 1, args + 2);
            let call_real = |code: &mut Vec<Instruction<'static>>| {
                for a in 0..args {
                    code.push(I::LocalGet(a));
                }
                code.push(I::Call(c.real));
            };
            let mut code = vec![
                I::LocalGet(c.ptr),
                I::LocalSet(ptr),
                I::LocalGet(c.size),
                I::LocalSet(size),
                // A null pointer, or no memory for the ring: straight to the real release.
                I::LocalGet(ptr),
                I::I32Eqz,
                I::Call(ring),
                I::I32Eqz,
                I::I32Or,
                I::If(BlockType::Empty),
            ];
            call_real(&mut code);
            code.extend([
                I::Return,
                I::End,
                // A block the ring already holds: the runtime releases it again because,
                // for it, the block was never released (a collector's next sweep). Keep it.
                // A held block's first word names its slot (`TAG | slot`); tiny blocks are
                // looked for.
                I::LocalGet(size),
                I::I32Const(4),
                I::I32LtU,
                I::If(BlockType::Result(ValType::I32)),
                I::LocalGet(ptr),
                I::Call(find),
                I::Else,
                I::LocalGet(ptr),
                I::I32Load(mem(0, 0)),
                I::LocalTee(e),
                I::I32Const(12),
                I::I32ShrU,
                I::I32Const(((RING_TAG as u32) >> 12) as i32),
                I::I32Eq,
                I::If(BlockType::Result(ValType::I32)),
                I::GlobalGet(base),
                I::LocalGet(e),
                I::I32Const(RING_ENTRIES - 1),
                I::I32And,
                I::I32Const(RING_ENTRY),
                I::I32Mul,
                I::I32Add,
                I::I32Load(mem(0, 2)),
                I::LocalGet(ptr),
                I::I32Eq,
                I::Else,
                I::I32Const(0),
                I::End,
                I::End,
                I::If(BlockType::Empty),
                I::Return,
                I::End,
                I::GlobalGet(count),
                I::I32Const(RING_ENTRIES),
                I::I32Eq,
                I::If(BlockType::Empty),
                I::Call(evict),
                I::End,
                I::GlobalGet(frees),
                I::I32Const(1),
                I::I32Add,
                I::GlobalSet(frees),
                I::LocalGet(ptr),
                I::I32Const(POISON_BYTE as i32),
                I::LocalGet(size),
                self.bulk.fill(m, edits),
            ]);
            code.extend(entry_at(vec![I::GlobalGet(count)]));
            code.extend([
                I::LocalTee(e),
                I::LocalGet(ptr),
                I::I32Store(mem(0, 2)),
                I::LocalGet(e),
                I::LocalGet(size),
                I::I32Store(mem(4, 2)),
                I::LocalGet(e),
                I::GlobalGet(frees),
                I::I32Store(mem(8, 2)),
                I::LocalGet(e),
                I::I32Const(k as i32),
                I::I32Store(mem(12, 2)),
            ]);
            for a in 0..args {
                code.extend([
                    I::LocalGet(e),
                    I::LocalGet(a),
                    I::I32Store(mem(16 + 4 * a as u64, 2)),
                ]);
            }
            // The first word names the slot.
            code.extend([
                I::LocalGet(size),
                I::I32Const(4),
                I::I32GeU,
                I::If(BlockType::Empty),
                I::LocalGet(ptr),
                I::GlobalGet(start),
                I::GlobalGet(count),
                I::I32Add,
                I::I32Const(RING_ENTRIES - 1),
                I::I32And,
                I::I32Const(RING_TAG),
                I::I32Or,
                I::I32Store(mem(0, 0)),
                I::End,
            ]);
            code.extend([
                I::GlobalGet(count),
                I::I32Const(1),
                I::I32Add,
                I::GlobalSet(count),
                I::GlobalGet(bytes),
                I::LocalGet(size),
                I::I32Add,
                I::GlobalSet(bytes),
                I::Block(BlockType::Empty),
                I::Loop(BlockType::Empty),
                I::GlobalGet(bytes),
                I::I32Const(limit as i32),
                I::I32LeU,
                I::BrIf(1),
                I::Call(evict),
                I::Br(0),
                I::End,
                I::End,
                I::End,
            ]);
            releases.push((c.func, code));
        }
        Ring {
            count,
            evict,
            find,
            verify_all,
            releases,
        }
    }

    /// stress(): the collector (once at a time: it may allocate), then the whole quarantine.
    fn custom_stress(&self, m: &Module<'_>, edits: &mut Edits<'_>, collect: Option<u32>) -> u32 {
        let mut code = Vec::new();
        if let Some(c) = collect {
            let busy = edits.add_i32_global(m, true, 0);
            edits.name_global(busy, "wasmfix:collecting");
            code.extend([
                I::GlobalGet(busy),
                I::I32Eqz,
                I::If(BlockType::Empty),
                I::I32Const(1),
                I::GlobalSet(busy),
                I::Call(c),
            ]);
            let results = m.func_sig(c).map_or(0, |t| t.results().len());
            code.extend(std::iter::repeat_n(I::Drop, results));
            code.extend([I::I32Const(0), I::GlobalSet(busy), I::End]);
        }
        if let Some(v) = self.verify_all {
            code.push(I::Call(v));
        }
        code.push(I::End);
        edits.add_helper(m, "wasmfix:heap_stress", (&[], &[]), &[], &code)
    }

    /// A custom allocation function's wrapper: the real one; when it fails while the ring
    /// holds blocks, release the oldest and try again (a fixed-size heap must not run out
    /// because of the quarantine). Local `r` after the parameters.
    fn custom_alloc(
        &self,
        m: &Module<'_>,
        func: u32,
        real: u32,
        stress: Option<u32>,
    ) -> Vec<Instruction<'static>> {
        let args = m.func_sig(func).map_or(0, |t| t.params().len() as u32);
        let r = args;
        let mut code = Vec::new();
        if let Some(s) = stress {
            code.push(I::Call(s));
        }
        code.extend([I::Block(BlockType::Empty), I::Loop(BlockType::Empty)]);
        for a in 0..args {
            code.push(I::LocalGet(a));
        }
        code.extend([I::Call(real), I::LocalTee(r), I::BrIf(1)]);
        if let Some(ring) = &self.ring {
            code.extend([
                I::GlobalGet(ring.count),
                I::I32Eqz,
                I::BrIf(1),
                I::Call(ring.evict),
                I::Br(0),
            ]);
        }
        code.extend([I::End, I::End, I::LocalGet(r), I::End]);
        code
    }

    /// `--check-host-pointers`: every listed import's i32 result and every listed export's
    /// i32 arguments go through `host_pointer(x, name)`, which stops when `x` points into a
    /// block the quarantine or the ring holds. Returns what is checked.
    fn check_host_pointers(
        &self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        list: &[HostPointer],
    ) -> Result<Vec<String>> {
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let Some(globals) = self.globals else {
            bail!("--check-host-pointers needs the quarantine");
        };
        let mut imports = std::collections::BTreeMap::new();
        let mut exports = Vec::new();
        for item in list {
            match item {
                HostPointer::Import { module, name } => {
                    let Some(f) = m.imported_func(module, name) else {
                        bail!("--check-host-pointers {item}: the module imports no such function");
                    };
                    if m.func_sig(f).is_none_or(|t| t.results() != [I32]) {
                        bail!(
                            "--check-host-pointers {item}: it returns {}, not one i32",
                            m.func_sig(f).map_or("?".into(), crate::sig::show)
                        );
                    }
                    imports.insert(f, format!("wasmfix: {module}.{name} returned "));
                }
                HostPointer::Export(name) => {
                    let Some(e) = m
                        .exports
                        .iter()
                        .find(|e| e.name == name && e.kind == wasmparser::ExternalKind::Func)
                    else {
                        bail!("--check-host-pointers {item}: the module exports no such function");
                    };
                    exports.push((name.clone(), e.index));
                }
            }
        }
        let check = self.host_pointer(m, edits, globals);
        let text =
            |edits: &mut Edits<'_>, t: &str| crate::diag::store_text(m, edits, t).unwrap_or((0, 0));
        let mut sites = std::collections::BTreeMap::new();
        for (&f, prefix) in &imports {
            sites.insert(f, text(edits, prefix));
        }
        let callers = direct_callers(m, edits, |f| sites.contains_key(&f));
        let mut checked: Vec<String> = list
            .iter()
            .filter(|x| matches!(x, HostPointer::Import { .. }))
            .map(|x| x.to_string())
            .collect();
        if !callers.is_empty() {
            edits.add_rewriter(Box::new(HostChecks {
                callers,
                sites,
                check,
            }));
        }
        for (name, f) in exports {
            let (off, len) = text(edits, &format!("wasmfix: {name} was passed "));
            let sig = m.func_sig(f).cloned().expect("a function");
            let mut code = Vec::new();
            for (i, p) in sig.params().iter().enumerate() {
                if *p == I32 {
                    code.extend([
                        I::LocalGet(i as u32),
                        I::I32Const(off as i32),
                        I::I32Const(len as i32),
                        I::Call(check),
                        I::Drop,
                    ]);
                }
            }
            for i in 0..sig.params().len() as u32 {
                code.push(I::LocalGet(i));
            }
            code.extend([I::Call(f), I::End]);
            let wrapper = edits.add_helper(
                m,
                &format!("wasmfix:check_host_pointers_then_{name}"),
                (sig.params(), sig.results()),
                &[],
                &code,
            );
            edits.redirect_export(&name, wrapper);
            checked.push(format!("export:{name}"));
        }
        Ok(checked)
    }

    /// host_pointer(x, text, length) -> x: stops when x points into a block the quarantine
    /// or the ring holds (its word reads the poison, and a held block contains it).
    fn host_pointer(&self, m: &Module<'_>, edits: &mut Edits<'_>, g: Globals) -> u32 {
        let (x, off, len, q, n, seq, e) = (0, 1, 2, 3, 4, 5, 6);
        let report = Message::start(m, edits, self.mode)
            .stored_text(m, edits, vec![I::LocalGet(off)], vec![I::LocalGet(len)])
            .hex(m, edits, vec![I::LocalGet(x)])
            .text(m, edits, ", which points into a block freed at release #")
            .number(m, edits, vec![I::LocalGet(seq)])
            .text(m, edits, " (")
            .number(m, edits, vec![I::LocalGet(n)])
            .text(m, edits, " bytes at ")
            .hex(m, edits, vec![I::LocalGet(q)])
            .text(m, edits, ")\n");
        let mut report = stop(m, edits, report, self.mode, false);
        let mut code = vec![
            // Not an address in memory, or not the poison there: not a held block.
            I::LocalGet(x),
            I::I32Const(16),
            I::I32LtU,
            I::LocalGet(x),
            I::I32Const(16),
            I::I32ShrU,
            I::MemorySize(0),
            I::I32GeU,
            I::I32Or,
            I::If(BlockType::Empty),
            I::LocalGet(x),
            I::Return,
            I::End,
            I::LocalGet(x),
            I::I32Const(-4),
            I::I32And,
            I::I32Load(mem(0, 2)),
            I::LocalTee(seq),
            I::I32Const(POISON_WORD as i32),
            I::I32Ne,
            I::LocalGet(seq),
            I::I32Const(12),
            I::I32ShrU,
            I::I32Const(((RING_TAG as u32) >> 12) as i32),
            I::I32Ne,
            I::I32And,
            I::If(BlockType::Empty),
            I::LocalGet(x),
            I::Return,
            I::End,
            I::Block(BlockType::Empty),
            I::Block(BlockType::Empty),
            I::GlobalGet(g.head),
            I::LocalSet(q),
            I::Loop(BlockType::Empty),
            I::LocalGet(q),
            I::I32Eqz,
            I::BrIf(1),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(4, 2)),
            I::LocalSet(n),
            I::LocalGet(x),
            I::LocalGet(q),
            I::I32Sub,
            I::LocalGet(n),
            I::I32Const(1),
            I::LocalGet(n),
            I::I32Const(1),
            I::I32GtU,
            I::Select,
            I::I32LtU,
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::LocalGet(n),
            I::I32Add,
            I::I32Load(mem(0, 0)),
            I::LocalSet(seq),
            I::Br(3),
            I::End,
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32Sub,
            I::I32Load(mem(12, 2)),
            I::LocalSet(q),
            I::Br(0),
            I::End,
            I::End,
        ];
        match &self.ring {
            Some(ring) => code.extend([
                I::LocalGet(x),
                I::Call(ring.find),
                I::LocalTee(e),
                I::I32Eqz,
                I::If(BlockType::Empty),
                I::LocalGet(x),
                I::Return,
                I::End,
                I::LocalGet(e),
                I::I32Load(mem(0, 2)),
                I::LocalSet(q),
                I::LocalGet(e),
                I::I32Load(mem(4, 2)),
                I::LocalSet(n),
                I::LocalGet(e),
                I::I32Load(mem(8, 2)),
                I::LocalSet(seq),
            ]),
            None => code.extend([I::LocalGet(x), I::Return]),
        }
        code.push(I::End);
        code.append(&mut report);
        code.push(I::End);
        edits.add_helper(
            m,
            "wasmfix:host_pointer",
            (&[I32, I32, I32], &[I32]),
            &[(4, ValType::I32)],
            &code,
        )
    }

    /// Checks the quarantine when the program ends: at the end of `_start` and before every
    /// call of WASI `proc_exit`. Returns what was hooked.
    fn check_at_exit(&self, m: &Module<'_>, edits: &mut Edits<'_>) -> Vec<String> {
        let Some(verify_all) = self.verify_all else {
            return Vec::new();
        };
        let mut hooked = Vec::new();
        let proc_exit: Vec<u32> = ["wasi_snapshot_preview1", "wasi_unstable"]
            .iter()
            .filter_map(|wasi| m.imported_func(wasi, "proc_exit"))
            .filter(|&f| m.func_sig(f) == Some(&wasmparser::FuncType::new([I32], [])))
            .collect();
        for &pe in &proc_exit {
            hooked.push(format!("proc_exit (function {pe})"));
        }
        let start = m
            .exports
            .iter()
            .find(|e| e.name == "_start" && e.kind == wasmparser::ExternalKind::Func)
            .map(|e| e.index)
            .filter(|&f| {
                f >= m.imported_funcs
                    && m.func_sig(f) == Some(&wasmparser::FuncType::new([], []))
                    && !edits.replaced_bodies.contains_key(&f)
            });
        if let Some(s) = start {
            hooked.push(format!("the end of _start (function {s})"));
        }
        let callers = match proc_exit.is_empty() {
            true => Vec::new(),
            false => direct_callers(m, edits, |f| proc_exit.contains(&f)),
        };
        if start.is_some() || !callers.is_empty() {
            edits.add_rewriter(Box::new(ExitChecks {
                start,
                callers,
                proc_exit,
                verify_all,
            }));
        }
        hooked
    }

    /// `if q is foreign { then }`: a block the wrappers did not allocate (recorded by a memory
    /// snapshot, e.g. Wizer's) has no header; it goes to the real functions unchecked. Foreign
    /// means inside the snapshot's heap *and* without our tag: the allocator may reuse freed
    /// snapshot memory for wrapped blocks, and those must still be checked.
    fn foreign(&self, q: u32, then: Vec<Instruction<'static>>) -> Vec<Instruction<'static>> {
        let Some((start, end)) = self.snapshot else {
            return Vec::new();
        };
        let tag = |flip: i32| {
            [
                I::LocalGet(q),
                I::I32Const(HEADER),
                I::I32Sub,
                I::I32Load(mem(8, 2)),
                I::LocalGet(q),
                I::I32Const(self.key ^ flip),
                I::I32Xor,
                I::I32Ne,
            ]
        };
        let mut code = vec![
            I::LocalGet(q),
            I::I32Const(start),
            I::I32Sub,
            I::I32Const(end.wrapping_sub(start)),
            I::I32LtU,
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::I32Const(HEADER),
            I::I32LtU,
            I::If(BlockType::Result(ValType::I32)),
            I::I32Const(1),
            I::Else,
        ];
        code.extend(tag(ALLOCATED_KEY_FLIP));
        code.extend(tag(FREED));
        code.extend([I::I32And, I::End, I::If(BlockType::Empty)]);
        code.extend(then);
        code.extend([I::End, I::End]);
        code
    }

    /// malloc(n): locals raw (1), spare (2).
    fn malloc(&self) -> Vec<Instruction<'static>> {
        let (n, raw) = (0, 1);
        let mut code = vec![
            I::LocalGet(n),
            I::I32Const(MAX_REQUEST),
            I::I32GtU,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
        ];
        if let Some(stress) = self.stress {
            code.push(I::Call(stress));
        }
        code.extend(self.raw_alloc(vec![
            I::LocalGet(n),
            I::I32Const(HEADER + REDZONE),
            I::I32Add,
        ]));
        code.extend([
            I::LocalTee(raw),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(raw),
            I::LocalGet(raw),
            I::I32Const(HEADER),
            I::I32Add,
            I::LocalGet(n),
            I::Call(self.mark),
            I::End,
        ]);
        code
    }

    /// free(q): local n (1).
    fn free(&self) -> Vec<Instruction<'static>> {
        let (q, n) = (0, 1);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::Return,
            I::End,
        ];
        code.extend(self.foreign(q, vec![I::LocalGet(q), I::Call(self.real_free), I::Return]));
        code.extend([I::LocalGet(q), I::Call(self.check), I::LocalSet(n)]);
        code.extend(self.on_skip(n, vec![I::Return]));
        code.extend([
            I::LocalGet(q),
            I::LocalGet(n),
            I::Call(self.release),
            I::End,
        ]);
        code
    }

    /// calloc(count, size): locals total (2, i64), q (3).
    fn calloc(
        &mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        malloc: u32,
    ) -> Vec<Instruction<'static>> {
        let (count, size, total, q) = (0, 1, 2, 3);
        vec![
            I::LocalGet(count),
            I::I64ExtendI32U,
            I::LocalGet(size),
            I::I64ExtendI32U,
            I::I64Mul,
            I::LocalTee(total),
            I::I64Const(MAX_REQUEST as i64),
            I::I64GtU,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(total),
            I::I32WrapI64,
            I::Call(malloc),
            I::LocalTee(q),
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::I32Const(0),
            I::LocalGet(total),
            I::I32WrapI64,
            self.bulk.fill(m, edits),
            I::End,
            I::LocalGet(q),
            I::End,
        ]
    }

    /// Copies `min(old, n)` bytes from block `q` to block `new`, then frees `q` with `free`
    /// (locals `(q, n, old, new)`).
    fn copy_then_free(
        &mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        (q, n, old, new): (u32, u32, u32, u32),
        free: u32,
    ) -> Vec<Instruction<'static>> {
        vec![
            I::LocalGet(new),
            I::LocalGet(q),
            I::LocalGet(old),
            I::LocalGet(n),
            I::LocalGet(old),
            I::LocalGet(n),
            I::I32LtU,
            I::Select,
            self.bulk.copy(m, edits),
            I::LocalGet(q),
            I::Call(free),
        ]
    }

    /// realloc(q, n): locals old (2), new (3).
    fn realloc(
        &mut self,
        m: &Module<'_>,
        edits: &mut Edits<'_>,
        malloc: u32,
        free: u32,
    ) -> Vec<Instruction<'static>> {
        let (q, n, old, new) = (0, 1, 2, 3);
        let mut code = vec![
            I::LocalGet(q),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::Return,
            I::End,
        ];
        // A snapshot's block: its size is unknown, so copy `n` bytes (what lies past a smaller
        // block is indeterminate in the new one, as C allows), within the memory.
        let mut copy = vec![
            I::LocalGet(n),
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::LocalTee(new),
            I::If(BlockType::Empty),
            // old = what lies from q to the end of the memory
            I::MemorySize(0),
            I::I32Const(16),
            I::I32Shl,
            I::LocalGet(q),
            I::I32Sub,
            I::LocalSet(old),
        ];
        let real_free = self.real_free;
        copy.extend(self.copy_then_free(m, edits, (q, n, old, new), real_free));
        copy.extend([
            I::End,
            I::LocalGet(new),
            I::Return,
            I::End,
            I::LocalGet(q),
            I::Call(real_free),
            I::I32Const(0),
            I::Return,
        ]);
        code.extend(self.foreign(q, copy));
        code.extend([I::LocalGet(q), I::Call(self.check), I::LocalSet(old)]);
        // A block that must not be freed: a fresh one, its contents unknown.
        code.extend(self.on_skip(old, vec![I::LocalGet(n), I::Call(malloc), I::Return]));
        code.extend([
            I::LocalGet(n),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(q),
            I::Call(free),
            I::I32Const(0),
            I::Return,
            I::End,
            I::LocalGet(n),
            I::Call(malloc),
            I::LocalTee(new),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
        ]);
        code.extend(self.copy_then_free(m, edits, (q, n, old, new), free));
        code.extend([I::LocalGet(new), I::End]);
        code
    }

    /// The aligned allocation of `n` bytes at `align` (locals of the caller: `align`, `n`,
    /// `raw`), leaving the block or 0.
    fn aligned_code(
        &self,
        (align, n, raw): (u32, u32, u32),
        malloc: u32,
    ) -> Vec<Instruction<'static>> {
        let mut code = vec![
            I::Block(BlockType::Result(ValType::I32)),
            // Up to 16: the header keeps malloc's own alignment.
            I::LocalGet(align),
            I::I32Const(HEADER),
            I::I32LeU,
            I::If(BlockType::Empty),
            I::LocalGet(n),
            I::Call(malloc),
            I::Br(1),
            I::End,
            // Round the alignment up to a power of two: 1 << (32 - clz(align - 1)).
            I::I32Const(1),
            I::I32Const(32),
            I::LocalGet(align),
            I::I32Const(1),
            I::I32Sub,
            I::I32Clz,
            I::I32Sub,
            I::I32Shl,
            I::LocalSet(align),
            I::I32Const(0),
            I::LocalGet(n),
            I::I32Const(MAX_REQUEST),
            I::LocalGet(align),
            I::I32Sub,
            I::I32GtU,
            I::LocalGet(align),
            I::I32Const(1 << 24),
            I::I32GtU,
            I::I32Or,
            I::BrIf(0),
            I::Drop,
        ];
        if let Some(stress) = self.stress {
            code.push(I::Call(stress));
        }
        code.push(I::I32Const(0));
        code.extend(self.raw_alloc(vec![
            I::LocalGet(n),
            I::LocalGet(align),
            I::I32Add,
            I::I32Const(HEADER + REDZONE),
            I::I32Add,
        ]));
        code.extend([
            I::LocalTee(raw),
            I::I32Eqz,
            I::BrIf(0),
            I::Drop,
            I::LocalGet(raw),
            I::LocalGet(raw),
            I::I32Const(HEADER),
            I::I32Add,
            I::LocalGet(align),
            I::I32Add,
            I::I32Const(1),
            I::I32Sub,
            I::I32Const(0),
            I::LocalGet(align),
            I::I32Sub,
            I::I32And,
            I::LocalGet(n),
            I::Call(self.mark),
            I::End,
        ]);
        code
    }

    /// aligned_alloc(align, n) and its relatives: locals raw (2), spare (3).
    fn aligned(&self, malloc: u32) -> Vec<Instruction<'static>> {
        let mut code = self.aligned_code((0, 1, 2), malloc);
        code.push(I::End);
        code
    }

    /// posix_memalign(out, align, n): local raw (3). EINVAL (28) for an alignment that is not
    /// a power of two multiple of 4, ENOMEM (48) when out of memory.
    fn posix_memalign(&self, malloc: u32) -> Vec<Instruction<'static>> {
        let (out, align, n, raw) = (0, 1, 2, 3);
        let mut code = vec![
            I::LocalGet(align),
            I::I32Const(4),
            I::I32LtU,
            I::LocalGet(align),
            I::LocalGet(align),
            I::I32Const(1),
            I::I32Sub,
            I::I32And,
            I::I32Or,
            I::If(BlockType::Empty),
            I::I32Const(28),
            I::Return,
            I::End,
        ];
        code.extend(self.aligned_code((align, n, raw), malloc));
        code.extend([
            I::LocalTee(raw),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(48),
            I::Return,
            I::End,
            I::LocalGet(out),
            I::LocalGet(raw),
            I::I32Store(mem(0, 2)),
            I::I32Const(0),
            I::End,
        ]);
        code
    }

    /// malloc_usable_size(q): the requested size (after checking the block); the real size
    /// of a snapshot's block.
    fn usable_size(&self, real: u32) -> Vec<Instruction<'static>> {
        let mut code = vec![
            I::LocalGet(0),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::I32Const(0),
            I::Return,
            I::End,
        ];
        code.extend(self.foreign(0, vec![I::LocalGet(0), I::Call(real), I::Return]));
        code.extend([I::LocalGet(0), I::Call(self.check)]);
        if self.mode == OnError::Report {
            // A block that must not be freed has no usable bytes.
            code.extend([
                I::LocalTee(0),
                I::I32Const(0),
                I::LocalGet(0),
                I::I32Const(SKIP),
                I::I32Ne,
                I::Select,
            ]);
        }
        code.push(I::End);
        code
    }

    /// In report mode, `if (local == SKIP) { then }` after `check`'s result went into `local`.
    fn on_skip(&self, local: u32, then: Vec<Instruction<'static>>) -> Vec<Instruction<'static>> {
        if self.mode == OnError::Stop {
            return Vec::new();
        }
        let mut code = vec![
            I::LocalGet(local),
            I::I32Const(SKIP),
            I::I32Eq,
            I::If(BlockType::Empty),
        ];
        code.extend(then);
        code.push(I::End);
        code
    }
}

/// The custom allocator functions (`--alloc-fn`, `--free-fn`, `--collect-fn`), checked.
struct Custom {
    allocs: Vec<u32>,
    /// (function, pointer argument, size argument)
    frees: Vec<(u32, u32, u32)>,
    collect: Option<u32>,
}

fn custom_note(custom: &Custom, host_checks: &[String]) -> String {
    let mut out = String::new();
    if !custom.allocs.is_empty() || !custom.frees.is_empty() {
        out.push_str(&format!(
            "; custom allocator: {} allocation and {} release functions, released blocks \
             poisoned and held in a ring of {RING_ENTRIES}",
            custom.allocs.len(),
            custom.frees.len()
        ));
    }
    if !host_checks.is_empty() {
        out.push_str(&format!(
            "; host pointers checked: {}",
            host_checks.join(", ")
        ));
    }
    out
}

/// Resolves and checks the custom allocator options.
fn custom_functions(
    m: &Module<'_>,
    names: &std::collections::HashMap<u32, String>,
    opts: &HeapOptions,
    alloc: &Allocator,
) -> Result<Custom> {
    let resolve = |option: &str, sel: &Selector| -> Result<u32> {
        let f = match sel {
            Selector::Index(i) => *i,
            Selector::Name(n) => match crate::allocator::named(m, names, n) {
                Some((f, _)) => f,
                None => bail!(
                    "--{option} {n}: no function of that name in the name section or the exports"
                ),
            },
        };
        if f < m.imported_funcs || f >= m.num_funcs() {
            bail!("--{option} {sel}: function {f} is not defined in the module");
        }
        if alloc.functions.iter().any(|a| a.func == f) {
            bail!("--{option} {sel}: function {f} is the malloc family's own");
        }
        Ok(f)
    };
    let all_i32 = |f: u32| {
        m.func_sig(f)
            .is_some_and(|t| t.params().iter().all(|p| *p == I32))
    };
    let show = |f: u32| m.func_sig(f).map_or("?".into(), crate::sig::show);
    let mut custom = Custom {
        allocs: Vec::new(),
        frees: Vec::new(),
        collect: None,
    };
    for spec in &opts.alloc_fns {
        let f = resolve("alloc-fn", &spec.func)?;
        if !all_i32(f) || m.func_sig(f).is_none_or(|t| t.results() != [I32]) {
            bail!(
                "--alloc-fn {}: function {f} has type {}; an allocation function takes i32 \
                 arguments and returns the block (i32)",
                spec.func,
                show(f)
            );
        }
        custom.allocs.push(f);
    }
    for spec in &opts.free_fns {
        let f = resolve("free-fn", &spec.func)?;
        let arity = m.func_sig(f).map_or(0, |t| t.params().len() as u32);
        if !all_i32(f) || m.func_sig(f).is_none_or(|t| !t.results().is_empty()) || arity > 4 {
            bail!(
                "--free-fn {}: function {f} has type {}; a release function takes one to four \
                 i32 arguments and returns nothing",
                spec.func,
                show(f)
            );
        }
        let Some(size) = spec.size else {
            bail!(
                "--free-fn {}: say which argument holds the block's size (:size=N), so the \
                 block can be poisoned",
                spec.func
            );
        };
        if spec.ptr >= arity || size >= arity || spec.ptr == size {
            bail!(
                "--free-fn {}: ptr={} and size={size} must be two different arguments of its \
                 {arity}",
                spec.func,
                spec.ptr
            );
        }
        custom.frees.push((f, spec.ptr, size));
    }
    if let Some(sel) = &opts.collect_fn {
        let f = resolve("collect-fn", sel)?;
        if m.func_sig(f).is_none_or(|t| !t.params().is_empty()) {
            bail!(
                "--collect-fn {sel}: function {f} has type {}; the collector takes no arguments",
                show(f)
            );
        }
        custom.collect = Some(f);
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in custom
        .allocs
        .iter()
        .chain(custom.frees.iter().map(|x| &x.0))
        .chain(&custom.collect)
    {
        if !seen.insert(*f) {
            bail!("function {f} is named twice among --alloc-fn, --free-fn and --collect-fn");
        }
    }
    if !custom.allocs.is_empty() && custom.frees.is_empty() {
        bail!("--alloc-fn needs the runtime's release function too (--free-fn)");
    }
    Ok(custom)
}

/// Checks the quarantine at the end of `_start` and before every `proc_exit` call.
struct ExitChecks {
    start: Option<u32>,
    /// Functions that call `proc_exit`, ascending.
    callers: Vec<u32>,
    /// The `proc_exit` imports.
    proc_exit: Vec<u32>,
    verify_all: u32,
}

impl BodyRewriter for ExitChecks {
    fn wants(&self, func: u32) -> bool {
        self.start == Some(func) || self.callers.binary_search(&func).is_ok()
    }

    fn instruction<'i>(
        &mut self,
        cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        match ins {
            // The exit code stays on the stack below the check, which takes nothing.
            Instruction::Call(f) if self.proc_exit.contains(&f) => {
                out.push(Instruction::Call(self.verify_all));
                out.push(ins);
            }
            Instruction::Return | Instruction::End
                if self.start == Some(cx.func)
                    && (matches!(ins, Instruction::Return) || cx.depth == 0) =>
            {
                out.push(Instruction::Call(self.verify_all));
                out.push(ins);
            }
            other => out.push(other),
        }
    }
}

/// Checks the i32 result of every call of a listed import.
struct HostChecks {
    /// Functions that call one, ascending.
    callers: Vec<u32>,
    /// Import → its message prefix (offset, length).
    sites: std::collections::BTreeMap<u32, (u32, u32)>,
    check: u32,
}

impl BodyRewriter for HostChecks {
    fn wants(&self, func: u32) -> bool {
        self.callers.binary_search(&func).is_ok()
    }

    fn instruction<'i>(
        &mut self,
        _cx: &mut BodyCx<'_>,
        ins: Instruction<'i>,
        out: &mut Vec<Instruction<'i>>,
    ) {
        if let Instruction::Call(f) = ins
            && let Some(&(off, len)) = self.sites.get(&f)
        {
            out.extend([
                ins,
                Instruction::I32Const(off as i32),
                Instruction::I32Const(len as i32),
                Instruction::Call(self.check),
            ]);
            return;
        }
        out.push(ins);
    }
}
