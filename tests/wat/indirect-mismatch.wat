;; passes: producers
;; A WASI command whose `call_indirect (type $two)` reaches a function of type `$one`: the C
;; function-pointer cast that traps with `indirect call type mismatch`.
(module $indirect_mismatch
  (type $one (func (param i32) (result i32)))
  (type $two (func (param i32 i32) (result i32)))
  (func $get_name (type $one) (i32.add (local.get 0) (i32.const 385)))
  (func $_start (export "_start")
    (drop (call_indirect (type $two) (i32.const 42) (i32.const 0) (i32.const 0))))
  (table 1 1 funcref)
  (elem (i32.const 0) func $get_name)
)
