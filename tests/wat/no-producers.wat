;; passes: producers
;; No producers section: one is appended after the name section with only
;; `processed-by wasmfix <version>`.
(module $no_producers
  (func $square (export "square") (param $x i32) (result i32)
    (i32.mul (local.get $x) (local.get $x)))
)
