;; passes: fpcast
;; options: --enable-gc
;; fpcast-dynamic.wat with --enable-gc: shadow tables, and the forwarder tests an entry
;; added at run time with ref.test for each signature it can be cast from.
(module
  (type $getter1 (func (param i32) (result i32)))
  (type $getter2 (func (param i32 i32) (result i32)))
  (table (export "__indirect_function_table") 3 funcref)
  (elem (i32.const 1) func $get_name $get_pair)
  (func $get_name (type $getter1) local.get 0 i32.const 100 i32.add)
  (func $get_pair (type $getter2) local.get 0 local.get 1 i32.mul)
  (func (export "call") (param $self i32) (param $slot i32) (result i32)
    local.get $self i32.const 7 local.get $slot call_indirect (type $getter2)))
