;; passes: stack-canary
;; Nested frames, as wasm-opt's inliner leaves them. `$caller` opens its own frame inside a
;; block (not a prologue), then holds two inlined callees' frames: one restored through its
;; frame local, one (inside the first) through `global.get sp`. Each certain frame gets a slot
;; pushed before its opening's `global.get sp` and checked at its restore, which then pops the
;; slot too. `$uncertain`'s nested frame is restored in both arms of an `if`, not at its own
;; level, and `$escapes`'s leaves through a branch to a label outside it: both are left alone.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory 2)
  (global $__stack_pointer (mut i32) (i32.const 70656))
  (func $caller (param $n i32) (result i32) (local $fp i32) (local $a i32)
    block (result i32)
      global.get $__stack_pointer
      i32.const 32
      i32.sub
      local.tee $fp
      global.set $__stack_pointer
      ;; an inlined callee with a 16-byte frame
      global.get $__stack_pointer
      i32.const 16
      i32.sub
      local.tee $a
      global.set $__stack_pointer
      local.get $a
      local.get $n
      i32.store offset=12
      ;; inlined into it, a callee that addresses its frame through the stack pointer
      global.get $__stack_pointer
      i32.const -16
      i32.add
      global.set $__stack_pointer
      global.get $__stack_pointer
      local.get $n
      i32.store
      global.get $__stack_pointer
      i32.const 16
      i32.add
      global.set $__stack_pointer
      local.get $a
      i32.const 16
      i32.add
      global.set $__stack_pointer
      local.get $fp
      i32.load offset=28
      local.get $fp
      i32.const 32
      i32.add
      global.set $__stack_pointer
    end)
  (func $uncertain (param $n i32) (local $a i32)
    global.get $__stack_pointer
    i32.const 16
    i32.sub
    local.tee $a
    global.set $__stack_pointer
    local.get $n
    if
      local.get $a
      i32.const 16
      i32.add
      global.set $__stack_pointer
    else
      local.get $a
      i32.const 16
      i32.add
      global.set $__stack_pointer
    end)
  (func $escapes (param $n i32) (local $a i32)
    block
      global.get $__stack_pointer
      i32.const 16
      i32.sub
      local.tee $a
      global.set $__stack_pointer
      local.get $n
      br_if 0
      local.get $a
      i32.const 16
      i32.add
      global.set $__stack_pointer
    end)
  (export "caller" (func $caller))
  (export "uncertain" (func $uncertain))
  (export "escapes" (func $escapes)))
