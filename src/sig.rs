//! Signatures: how wasmfix prints them and when one can be adapted to another.

use wasmparser::{FuncType, ValType};

/// `(i32,i32)->(i32)`: the form used in messages, reports and added names.
pub fn show(ty: &FuncType) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("({})->({})", list(ty.params()), list(ty.results()))
}

/// Whether a value of type `ty` has a zero a C caller would expect for a missing argument
/// or result (`0`, `0L`, `0.0f`, `0.0`, a zero vector, or a null reference).
pub fn has_zero(ty: ValType) -> bool {
    match ty {
        ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128 => true,
        ValType::Ref(r) => r.is_nullable(),
    }
}

/// Whether parameters `have` (the callee's) and `passed` (the call site's) line up in C:
/// the same type, or i32 and i64 (wrapped or zero-extended).
fn param_compatible(have: ValType, passed: ValType) -> bool {
    have == passed
        || matches!(
            (have, passed),
            (ValType::I32, ValType::I64) | (ValType::I64, ValType::I32)
        )
}

/// Whether a function of type `callee` may be called through a `call_indirect` of type `site`
/// with C-like semantics: equal (or i32/i64) types on the common parameter prefix, any number
/// of extra or missing parameters (missing ones must have a zero), and equal results or one
/// side without results. Equal types are not a cast and return false.
pub fn castable(callee: &FuncType, site: &FuncType) -> bool {
    if callee == site {
        return false;
    }
    let (have, passed) = (callee.params(), site.params());
    if !have
        .iter()
        .zip(passed)
        .all(|(&h, &p)| param_compatible(h, p))
    {
        return false;
    }
    if have.len() > passed.len() && !have[passed.len()..].iter().all(|&t| has_zero(t)) {
        return false;
    }
    let (got, want) = (callee.results(), site.results());
    got == want || got.is_empty() && want.iter().all(|&t| has_zero(t)) || want.is_empty()
}

/// The signatures an entry added at run time may have when a call site typed `site` reaches
/// it through a castable cast, in a fixed order: every signature of `known` (the module's
/// own types) castable to `site`, then the common C variants of `site` itself: its
/// parameters cut short, or extended by up to two `i32`s, returning what the site returns,
/// nothing, or (for a site that wants nothing) an `i32` it drops. Functions that come from
/// another module (an Emscripten side module, `addFunction`) often have a signature the
/// main module never declares; the variants cover the casts C code makes in practice.
pub fn run_time_candidates<'a>(
    site: &FuncType,
    known: impl IntoIterator<Item = &'a FuncType>,
) -> Vec<FuncType> {
    let mut out: Vec<FuncType> = Vec::new();
    let mut add = |ty: FuncType| {
        if castable(&ty, site) && !out.contains(&ty) {
            out.push(ty);
        }
    };
    for ty in known {
        add(ty.clone());
    }
    let params = site.params();
    let mut results: Vec<Vec<ValType>> = vec![site.results().to_vec(), Vec::new()];
    if site.results().is_empty() {
        results.push(vec![ValType::I32]);
    }
    for n in 0..=params.len() + 2 {
        let p: Vec<ValType> = (0..n)
            .map(|i| params.get(i).copied().unwrap_or(ValType::I32))
            .collect();
        for r in &results {
            add(FuncType::new(p.iter().copied(), r.iter().copied()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ValType::*;

    fn ft(p: &[ValType], r: &[ValType]) -> FuncType {
        FuncType::new(p.iter().copied(), r.iter().copied())
    }

    #[test]
    fn castable_follows_c_calling_rules() {
        let getter1 = ft(&[I32], &[I32]);
        let getter2 = ft(&[I32, I32], &[I32]);
        assert!(castable(&getter1, &getter2), "extra argument is dropped");
        assert!(castable(&getter2, &getter1), "missing argument reads zero");
        assert!(
            castable(&ft(&[I32], &[]), &ft(&[I32], &[I32])),
            "missing result reads zero"
        );
        assert!(
            castable(&ft(&[I32], &[I32]), &ft(&[I32], &[])),
            "unwanted result is dropped"
        );
        assert!(
            castable(&ft(&[I64], &[I32]), &ft(&[I32], &[I32])),
            "i32 zero-extends to i64"
        );
        assert!(!castable(&getter1, &getter1), "same type is no cast");
        assert!(
            !castable(&ft(&[F64], &[F64]), &ft(&[I32], &[I32])),
            "f64 is not an i32"
        );
        assert!(
            !castable(&ft(&[I32], &[I64]), &ft(&[I32], &[I32])),
            "different results"
        );
    }

    #[test]
    fn run_time_candidates_are_castable_variants_of_the_site() {
        let site = ft(&[I32, I32], &[I32]);
        let known = [ft(&[F64], &[F64]), ft(&[I64], &[I32]), site.clone()];
        let c = run_time_candidates(&site, &known);
        assert_eq!(
            c[0],
            ft(&[I64], &[I32]),
            "the module's own castable types first"
        );
        assert!(c.contains(&ft(&[I32], &[I32])), "getter idiom");
        assert!(
            c.contains(&ft(&[I32, I32, I32], &[I32])),
            "a missing argument"
        );
        assert!(
            c.contains(&ft(&[I32, I32], &[])),
            "a void function read as int"
        );
        assert!(!c.contains(&site) && !c.contains(&ft(&[F64], &[F64])));
        assert!(c.iter().all(|u| castable(u, &site)));
        let void_site = ft(&[I32], &[]);
        assert!(run_time_candidates(&void_site, []).contains(&ft(&[I32], &[I32])));
    }
}
