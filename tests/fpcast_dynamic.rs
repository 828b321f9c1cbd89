//! fpcast on a table that changes at run time (exported, grown and written by code): castable
//! entries present at link time are adapted; entries added later behave exactly as before.

use wasmfix::passes::fpcast::Design;
use wasmtime::{Engine, Instance, Module, Store, TypedFunc};

const WAT: &str = r#"
(module
  (type $one (func (param i32) (result i32)))
  (type $two (func (param i32 i32) (result i32)))
  (table (export "table") 4 100 funcref)
  (elem (i32.const 1) func $inc $mul)
  (func $inc (type $one) local.get 0 i32.const 1 i32.add)
  (func $mul (type $two) local.get 0 local.get 1 i32.mul)
  (func $sub (type $two) local.get 0 local.get 1 i32.sub)
  (func $neg (type $one) i32.const 0 local.get 0 i32.sub)
  ;; call2(a, b, slot) = table[slot](a, b) as (i32,i32)->i32
  (func (export "call2") (param i32 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 call_indirect (type $two))
  ;; appends $sub (matching) and returns its slot
  (func (export "grow_sub") (result i32)
    ref.func $sub i32.const 1 table.grow)
  ;; appends $neg (castable, added at run time) and returns its slot
  (func (export "grow_neg") (result i32)
    ref.func $neg i32.const 1 table.grow)
  (elem declare func $sub $neg))
"#;

struct Calls {
    store: Store<()>,
    call2: TypedFunc<(i32, i32, i32), i32>,
    grow_sub: TypedFunc<(), i32>,
    grow_neg: TypedFunc<(), i32>,
}

fn instantiate(wasm: &[u8]) -> Calls {
    let engine = Engine::default();
    let module = Module::new(&engine, wasm).unwrap();
    let mut store = Store::new(&engine, ());
    let i = Instance::new(&mut store, &module, &[]).unwrap();
    let call2 = i.get_typed_func(&mut store, "call2").unwrap();
    let grow_sub = i.get_typed_func(&mut store, "grow_sub").unwrap();
    let grow_neg = i.get_typed_func(&mut store, "grow_neg").unwrap();
    Calls {
        store,
        call2,
        grow_sub,
        grow_neg,
    }
}

fn trap_text(r: wasmtime::Result<i32>) -> String {
    format!("{:?}", r.expect_err("expected a trap"))
}

#[test]
fn run_time_table_changes_behave_as_before() {
    for (design, mode) in [
        (
            Design::Tables,
            "shadow table, forwarder from the link-time length on",
        ),
        (Design::Mvp, "views in the table"),
    ] {
        check_design(design, mode);
    }
}

fn check_design(design: Design, mode: &str) {
    let wasm = wat::parse_str(WAT).unwrap();
    let options = wasmfix::passes::PassOptions {
        fpcast_design: Some(design),
        ..Default::default()
    };
    let out = wasmfix::pipeline::run(&wasm, &[wasmfix::passes::find("fpcast").unwrap()], &options)
        .unwrap_or_else(|f| panic!("{f}"));
    let report = &out.reports[0];
    assert_eq!(
        report.details["signatures"][0]["mode"], mode,
        "{:#}",
        report.details
    );

    let mut before = instantiate(&wasm);
    let mut after = instantiate(&out.bytes);
    let mut both = |slot: i32| {
        let b = before.call2.call(&mut before.store, (6, 7, slot));
        let a = after.call2.call(&mut after.store, (6, 7, slot));
        (b, a)
    };
    // Matching entry: same value.
    let (b, a) = both(2);
    assert_eq!((b.unwrap(), a.unwrap()), (42, 42));
    // Castable entry present at link time: trapped, now inc(6).
    let (b, a) = both(1);
    assert!(trap_text(b).contains("indirect call type mismatch"));
    assert_eq!(a.unwrap(), 7);
    // Null and out-of-range slots keep their traps.
    for slot in [0, 3, 50] {
        let (b, a) = both(slot);
        let (b, a) = (trap_text(b), trap_text(a));
        assert!(
            !b.contains("mismatch") && !a.contains("mismatch"),
            "{b} / {a}"
        );
    }
    // Entries appended at run time: the matching one works in both…
    // (In the WebAssembly 1.0 design the views lie past the original slots, so appended
    // entries get other numbers; function pointers are opaque to C.)
    let s1 = before.grow_sub.call(&mut before.store, ()).unwrap();
    let s2 = after.grow_sub.call(&mut after.store, ()).unwrap();
    assert_eq!(s1 == s2, design == Design::Tables, "{s1} / {s2}");
    let b = before.call2.call(&mut before.store, (6, 7, s1)).unwrap();
    let a = after.call2.call(&mut after.store, (6, 7, s2)).unwrap();
    assert_eq!((b, a), (-1, -1));
    // …and a castable one appended later behaves exactly as before: it still traps.
    let s1 = before.grow_neg.call(&mut before.store, ()).unwrap();
    let s2 = after.grow_neg.call(&mut after.store, ()).unwrap();
    assert!(trap_text(before.call2.call(&mut before.store, (6, 7, s1))).contains("mismatch"));
    assert!(trap_text(after.call2.call(&mut after.store, (6, 7, s2))).contains("mismatch"));
}
