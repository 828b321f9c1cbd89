;; passes: stack-canary
;; Functions that open with a constant-frame prologue get a canary slot above their frame,
;; checked at the end of the body (which branches to the function's label reach too), before
;; `return` and before `return_call`. `$stack_alloc` moves the stack pointer on purpose and
;; `$leaf` has no frame: both are left alone. The module imports `random_get`, so `_start`
;; is pointed at a wrapper that randomizes the canary once before calling it.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory 2)
  (global $__stack_pointer (mut i32) (i32.const 70656))
  (func $check (param $n i32) (result i32) (local $fp i32)
    global.get $__stack_pointer
    i32.const 32
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    local.get $fp
    local.get $n
    i32.store
    block
      local.get $n
      i32.eqz
      br_if 0
      ;; an early return through the function's own label
      local.get $n
      local.get $n
      i32.const 1
      i32.eq
      br_if 1
      drop
      local.get $fp
      i32.const 32
      i32.add
      global.set $__stack_pointer
      local.get $n
      return
    end
    local.get $fp
    i32.load
    local.get $fp
    i32.const 32
    i32.add
    global.set $__stack_pointer)
  (func $tail (param $n i32) (result i32) (local $fp i32)
    global.get $__stack_pointer
    i32.const 16
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    local.get $fp
    i32.const 16
    i32.add
    global.set $__stack_pointer
    local.get $n
    return_call $leaf)
  (func $leaf (param i32) (result i32) local.get 0)
  (func $stack_alloc (param $n i32) (result i32) (local $p i32)
    global.get $__stack_pointer
    local.get $n
    i32.sub
    i32.const -16
    i32.and
    local.tee $p
    global.set $__stack_pointer
    local.get $p)
  (func (export "_start")
    i32.const 5
    call $check
    call $tail
    call $stack_alloc
    drop))
