;; passes: producers
;; A module rewritten by an older wasmfix: its `processed-by wasmfix` value is updated in place
;; instead of being duplicated.
(module
  (func (export "main"))
  (@producers
    (processed-by "clang" "19.1.7")
    (processed-by "wasmfix" "0.0.1"))
)
