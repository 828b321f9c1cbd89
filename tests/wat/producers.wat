;; passes: producers
;; A producers section written by a toolchain: `processed-by wasmfix <version>` joins the
;; existing `processed-by` field, the other fields and values keep their order, and the custom
;; section after it stays after it.
(module $with_producers
  (func $main (export "main") (result i32) (i32.const 42))
  (@producers
    (language "C11" "")
    (processed-by "clang" "14.0.6")
    (sdk "wasi-sdk" "20.0"))
  (@custom "trailer" (after last) "after producers")
)
