;; passes: stack
;; A C-like module whose 64 KiB stack lies above its data: every stack-pointer write is checked,
;; except the epilogue that provably restores the entry value; overflows print through fd_write.
;; `$recurse` has one checked write, checked in place; `$vla` has three (a prologue, a dynamic
;; allocation, an epilogue that re-reads the pointer), which branch to one trap block.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory 2)
  (global $__stack_pointer (mut i32) (i32.const 70656))
  (data (i32.const 1024) "data below the stack")
  (func $recurse (export "recurse") (param $n i32) (result i32) (local $fp i32)
    global.get $__stack_pointer
    i32.const 4096
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    local.get $fp
    local.get $n
    i32.store
    local.get $n
    if
      local.get $n
      i32.const 1
      i32.sub
      call $recurse
      drop
    end
    local.get $fp
    i32.load
    local.get $fp
    i32.const 4096
    i32.add
    global.set $__stack_pointer)
  (func $vla (export "vla") (param $n i32) (result i32) (local $fp i32)
    global.get $__stack_pointer
    i32.const 16
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    block
      local.get $n
      i32.eqz
      br_if 0
      ;; a variable-length array of n bytes (wraps around zero when n is huge)
      global.get $__stack_pointer
      local.get $n
      i32.sub
      global.set $__stack_pointer
      ;; return early through the function's own label
      local.get $fp
      local.get $n
      i32.const 1
      i32.eq
      br_if 1
      drop
    end
    global.get $__stack_pointer
    local.get $fp
    i32.sub
    global.get $__stack_pointer
    i32.const 16
    i32.add
    global.set $__stack_pointer))
