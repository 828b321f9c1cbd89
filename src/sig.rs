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
}
