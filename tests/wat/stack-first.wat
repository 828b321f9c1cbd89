;; passes: producers
;; What `wasm-ld --stack-first` produces, in miniature: the stack [0, 65536) lies below the data
;; at 65536, so an overflow runs off address 0 and traps. No hazards: `wasmfix --check` exits 0.
(module $stack_first
  (type $void (func))
  (memory $memory 2)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (func $leaf (type $void)
    (local $sp i32)
    (global.set $__stack_pointer
      (local.tee $sp (i32.sub (global.get $__stack_pointer) (i32.const 16))))
    (i32.store (local.get $sp) (i32.const 7))
    (global.set $__stack_pointer (i32.add (local.get $sp) (i32.const 16))))
  (func $_start (export "_start") (type $void) (call $leaf))
  (data (i32.const 65536) "data above the stack")
)
