;; passes: heap-canary
;; A toy bump allocator under libc's names: `malloc` only forwards to `dlmalloc`, so `dlmalloc`
;; is wrapped in place (its body moves to `wasmfix:real_malloc`), like `free`; `calloc` and
;; `realloc` get bodies built on the two wrappers. Every caller keeps calling the same indices.
;; `free` poisons the block and puts it in the quarantine; the module uses no bulk memory, so
;; poisoning, `calloc`'s clearing and `realloc`'s copy call loops (`wasmfix:fill`/`copy`).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory 2)
  (global $top (mut i32) (i32.const 4096))
  (func $malloc (export "malloc") (param i32) (result i32)
    local.get 0
    call $dlmalloc)
  (func $dlmalloc (param $n i32) (result i32) (local $p i32)
    global.get $top
    local.tee $p
    local.get $n
    i32.const 15
    i32.add
    i32.const -16
    i32.and
    i32.add
    global.set $top
    local.get $p)
  (func $free (export "free") (param i32))
  (func $calloc (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.mul
    call $dlmalloc)
  (func $realloc (param i32 i32) (result i32)
    local.get 1
    call $dlmalloc)
  (func $strdup_like (export "dup") (result i32)
    i32.const 16
    call $malloc))
