//! Property test of the fpcast pass: random modules with random signatures, a table mixing
//! them, and one exported `call_indirect` site per signature. Every (site, slot) pair is called
//! before and after the pass in wasmtime: calls that worked return the same value, castable
//! mismatches return what a C call would (per a model of the arguments' adaptation), and
//! every other trap stays a trap. The output always validates. Each case picks fpcast's design
//! (shadow tables or views in the table) and whether the table is exported (so it may change
//! at run time, and indices past its link-time length go through the forwarder).

use proptest::prelude::*;
use wasmtime::{Engine, Instance, Module, Store, Val};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    I32,
    I64,
    F64,
}

impl Ty {
    fn wat(self) -> &'static str {
        match self {
            Ty::I32 => "i32",
            Ty::I64 => "i64",
            Ty::F64 => "f64",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Sig {
    params: Vec<Ty>,
    result: Option<Ty>,
}

impl Sig {
    fn wat(&self) -> String {
        let params: Vec<&str> = self.params.iter().map(|t| t.wat()).collect();
        let mut s = String::new();
        if !params.is_empty() {
            s += &format!("(param {})", params.join(" "));
        }
        if let Some(r) = self.result {
            s += &format!(" (result {})", r.wat());
        }
        s
    }
}

/// The wasmfix rule, restated independently for the model.
fn castable(callee: &Sig, site: &Sig) -> bool {
    if callee == site {
        return false;
    }
    let compatible = |a: Ty, b: Ty| a == b || (a != Ty::F64 && b != Ty::F64);
    let prefix_ok = callee
        .params
        .iter()
        .zip(&site.params)
        .all(|(&a, &b)| compatible(a, b));
    let results_ok =
        callee.result == site.result || callee.result.is_none() || site.result.is_none();
    prefix_ok && results_ok
}

fn sig_strategy() -> impl Strategy<Value = Sig> {
    let ty = prop_oneof![Just(Ty::I32), Just(Ty::I64), Just(Ty::F64)];
    (
        proptest::collection::vec(ty.clone(), 0..4),
        proptest::option::of(ty),
    )
        .prop_map(|(params, result)| Sig { params, result })
}

/// Function `id` computes `id * 1000 + Σ param_i * (i + 1)` in i64 and converts it to its result.
fn func_wat(id: usize, sig: &Sig) -> String {
    let mut body = format!("i64.const {}\n", id as i64 * 1000);
    for (i, t) in sig.params.iter().enumerate() {
        body += &format!("local.get {i}\n");
        body += match t {
            Ty::I32 => "i64.extend_i32_u\n",
            Ty::I64 => "",
            Ty::F64 => "i64.trunc_sat_f64_s\n",
        };
        body += &format!("i64.const {}\ni64.mul\ni64.add\n", i + 1);
    }
    body += match sig.result {
        Some(Ty::I32) => "i32.wrap_i64\n",
        Some(Ty::I64) => "",
        Some(Ty::F64) => "f64.convert_i64_s\n",
        None => "drop\n",
    };
    format!("(func $f{id} (type $t{id}) {body})\n")
}

/// What function `id` returns for the argument values `args` (already in its own types).
fn model(id: usize, sig: &Sig, args: &[i64]) -> Option<i64> {
    let mut acc = id as i64 * 1000;
    for (i, (&a, t)) in args.iter().zip(&sig.params).enumerate() {
        let v = match t {
            Ty::I32 => a as u32 as i64,
            Ty::I64 => a,
            Ty::F64 => a, // arguments are small integers, exact as f64
        };
        acc = acc.wrapping_add(v.wrapping_mul(i as i64 + 1));
    }
    sig.result.map(|r| match r {
        Ty::I32 => acc as i32 as i64,
        _ => acc,
    })
}

fn to_val(t: Ty, v: i64) -> Val {
    match t {
        Ty::I32 => Val::I32(v as i32),
        Ty::I64 => Val::I64(v),
        Ty::F64 => Val::F64((v as f64).to_bits()),
    }
}

fn from_val(v: &Val) -> i64 {
    match v {
        Val::I32(x) => *x as i64,
        Val::I64(x) => *x,
        Val::F64(bits) => f64::from_bits(*bits) as i64,
        other => panic!("unexpected value {other:?}"),
    }
}

#[derive(Debug)]
struct Case {
    funcs: Vec<Sig>,
    /// Table slots: a function index or a null slot.
    slots: Vec<Option<usize>>,
    sites: Vec<Sig>,
    /// The table is exported (fpcast treats it as changing at run time).
    exported: bool,
    /// `--fpcast-design tables` (with reference types enabled) rather than the default.
    tables: bool,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(sig_strategy(), 1..8),
        proptest::collection::vec(sig_strategy(), 1..5),
        proptest::collection::vec(proptest::option::weighted(0.85, 0usize..100), 1..12),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(funcs, mut sites, raw_slots, exported, tables)| {
            // Every site signature should also be matched by some function, sometimes.
            if let Some(f) = funcs.first() {
                sites.push(f.clone());
            }
            let slots = raw_slots
                .into_iter()
                .map(|s| s.map(|i| i % funcs.len()))
                .collect();
            Case {
                funcs,
                slots,
                sites,
                exported,
                tables,
            }
        })
}

fn module_wat(case: &Case) -> String {
    let mut w = String::from("(module\n");
    for (i, s) in case.funcs.iter().enumerate() {
        w += &format!("(type $t{i} (func {}))\n", s.wat());
    }
    for (k, s) in case.sites.iter().enumerate() {
        w += &format!("(type $s{k} (func {}))\n", s.wat());
    }
    for (i, s) in case.funcs.iter().enumerate() {
        w += &func_wat(i, s);
    }
    let export = if case.exported {
        "(export \"table\")"
    } else {
        ""
    };
    w += &format!("(table {export} {} funcref)\n", case.slots.len());
    for (slot, f) in case.slots.iter().enumerate() {
        if let Some(f) = f {
            w += &format!("(elem (i32.const {slot}) func $f{f})\n");
        }
    }
    for (k, s) in case.sites.iter().enumerate() {
        // call_k(args…, index) → result, through one call_indirect.
        let mut params: Vec<&str> = s.params.iter().map(|t| t.wat()).collect();
        params.push("i32");
        let result = s
            .result
            .map_or(String::new(), |r| format!("(result {})", r.wat()));
        let mut body = String::new();
        for i in 0..=s.params.len() {
            body += &format!("local.get {i}\n");
        }
        body += &format!("call_indirect (type $s{k})\n");
        w += &format!(
            "(func (export \"call{k}\") (param {}) {result}\n{body})\n",
            params.join(" ")
        );
    }
    w + ")\n"
}

enum Outcome {
    Value(Option<i64>),
    Trap(String),
}

fn call(engine: &Engine, module: &Module, export: &str, args: &[Val], results: usize) -> Outcome {
    let mut store = Store::new(engine, ());
    let instance = match Instance::new(&mut store, module, &[]) {
        Ok(i) => i,
        Err(e) => return Outcome::Trap(format!("instantiation: {e:?}")),
    };
    let f = instance
        .get_func(&mut store, export)
        .expect("export exists");
    let mut out = vec![Val::I32(0); results];
    match f.call(&mut store, args, &mut out) {
        Ok(()) => Outcome::Value(out.first().map(from_val)),
        Err(e) => Outcome::Trap(format!("{e:?}")),
    }
}

fn check(case: &Case, diagnose: bool) -> Result<(), TestCaseError> {
    let wasm = wat::parse_str(module_wat(case)).expect("generated WAT parses");
    let mut options = wasmfix::passes::PassOptions {
        fpcast_diagnose: diagnose,
        ..Default::default()
    };
    if case.tables {
        options.fpcast_design = Some(wasmfix::passes::fpcast::Design::Tables);
        options
            .features
            .enable(wasmfix::features::Feature::ReferenceTypes);
    }
    let fixed = match wasmfix::pipeline::run(
        &wasm,
        &[wasmfix::passes::find("fpcast").unwrap()],
        &options,
    ) {
        Ok(o) => o.bytes,
        Err(f) => return Err(TestCaseError::fail(format!("fpcast failed: {f}"))),
    };
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&fixed)
        .map_err(|e| TestCaseError::fail(format!("output invalid: {e}")))?;
    let engine = Engine::default();
    let original = Module::new(&engine, &wasm).expect("module compiles");
    let rewritten = Module::new(&engine, &fixed).expect("module compiles");
    for (k, site) in case.sites.iter().enumerate() {
        let arg_values: Vec<i64> = (0..site.params.len()).map(|i| 3 + 2 * i as i64).collect();
        // Every slot, plus some out of range (past the original table, where the views of the
        // WebAssembly 1.0 design lie, and far past it).
        let slots = (0..=case.slots.len() + 4).chain([1000, u32::MAX as usize]);
        for slot in slots {
            let mut args: Vec<Val> = site
                .params
                .iter()
                .zip(&arg_values)
                .map(|(&t, &v)| to_val(t, v))
                .collect();
            args.push(Val::I32(slot as i32));
            let results = site.result.is_some() as usize;
            let export = format!("call{k}");
            let before = call(&engine, &original, &export, &args, results);
            let after = call(&engine, &rewritten, &export, &args, results);
            let callee = case.slots.get(slot).copied().flatten();
            match (&before, &after) {
                (Outcome::Value(b), Outcome::Value(a)) => {
                    prop_assert_eq!(b, a, "slot {} site {}", slot, k)
                }
                (Outcome::Trap(why), after) => {
                    let cast = callee.filter(|&f| castable(&case.funcs[f], site));
                    match (cast, after) {
                        (Some(f), Outcome::Value(got)) => {
                            prop_assert!(why.contains("indirect call type mismatch"), "{}", why);
                            // C semantics: the callee sees the site's arguments adapted.
                            let callee_args: Vec<i64> = case.funcs[f]
                                .params
                                .iter()
                                .enumerate()
                                .map(|(i, &t)| match (arg_values.get(i), site.params.get(i)) {
                                    (Some(&v), Some(&Ty::I64)) if t == Ty::I32 => v as i32 as i64,
                                    (Some(&v), _) => v,
                                    (None, _) => 0,
                                })
                                .collect();
                            let want = match (model(f, &case.funcs[f], &callee_args), site.result) {
                                (_, None) => None,
                                (None, Some(_)) => Some(0),
                                (Some(v), Some(Ty::I32)) => Some(v as i32 as i64),
                                (Some(v), Some(_)) => Some(v),
                            };
                            prop_assert_eq!(*got, want, "cast slot {} site {}", slot, k);
                        }
                        (Some(_), Outcome::Trap(t)) => {
                            return Err(TestCaseError::fail(format!(
                                "castable call slot {slot} site {k} still traps: {t}"
                            )));
                        }
                        (None, Outcome::Trap(_)) => {}
                        (None, Outcome::Value(v)) => {
                            return Err(TestCaseError::fail(format!(
                                "non-castable call slot {slot} site {k} trapped before ({why}) but returned {v:?}"
                            )));
                        }
                    }
                }
                (Outcome::Value(v), Outcome::Trap(t)) => {
                    return Err(TestCaseError::fail(format!(
                        "slot {slot} site {k} returned {v:?} before and traps after: {t}"
                    )));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn castable_calls_follow_c_semantics_and_others_are_unchanged(case in case_strategy()) {
        check(&case, false)?;
    }

    #[test]
    fn with_diagnose_non_castable_calls_still_trap(case in case_strategy()) {
        check(&case, true)?;
    }
}
