;; passes: fpcast
;; The same cast through an exported table (Emscripten's __indirect_function_table) of a
;; WebAssembly 1.0 module: views appended to the table itself; indices from the link-time
;; length on go to a forwarder that makes the original call, so entries added later behave
;; as before.
(module
  (type $getter1 (func (param i32) (result i32)))
  (type $getter2 (func (param i32 i32) (result i32)))
  (table (export "__indirect_function_table") 3 funcref)
  (elem (i32.const 1) func $get_name $get_pair)
  (func $get_name (type $getter1) local.get 0 i32.const 100 i32.add)
  (func $get_pair (type $getter2) local.get 0 local.get 1 i32.mul)
  (func (export "call") (param $self i32) (param $slot i32) (result i32)
    local.get $self i32.const 7 local.get $slot call_indirect (type $getter2)))
