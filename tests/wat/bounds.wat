;; passes: bounds
;; Null page [0, 1024) (the data starts at 1024) and read-only data [1024, 1040) (the segment
;; the name section calls `.rodata`). Loads check the null page; stores check both, merged into
;; one comparison because `.rodata` starts at the null page's end. Left unchecked: the
;; stack-pointer-relative accesses (`global.get $sp`, and `$fp`, set once from it), a constant
;; address past both ranges and an offset past both ranges.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory 1)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (data $.rodata (i32.const 1024) "read-only text!\00")
  (data $.data (i32.const 1040) "\2a\00\00\00")
  (func $get (export "get") (param $p i32) (result i32)
    local.get $p
    i32.load offset=4)
  (func $put (export "put") (param $p i32) (param $v i64)
    local.get $p
    local.get $v
    i64.store offset=8)
  (func $fine (export "fine") (param $p i32) (result i32) (local $fp i32)
    global.get $__stack_pointer
    i32.const 16
    i32.sub
    local.tee $fp
    global.set $__stack_pointer
    local.get $fp
    i32.const 7
    i32.store offset=4
    global.get $__stack_pointer
    i32.load
    i32.const 2048
    i32.load
    i32.add
    local.get $p
    i32.load offset=4096
    i32.add
    local.get $fp
    i32.const 16
    i32.add
    global.set $__stack_pointer))
