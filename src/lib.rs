//! wasmfix: a post-link WebAssembly rewriter for modules built from C, C++ and C extensions.
//!
//! The library reads a module ([`module::Module`]), establishes its layout once
//! ([`facts::Facts`]), lets the passes in `passes/` collect edits ([`edit::Edits`]), writes the
//! result with untouched parts copied byte for byte ([`emit`]), and validates it
//! ([`validate`]). [`pipeline::run`] ties these together; the `wasmfix` binary is a thin CLI.

pub mod allocator;
pub mod codemap;
pub mod component;
pub mod diag;
pub mod dwarf;
pub mod edit;
pub mod emit;
pub mod facts;
pub mod features;
pub mod heap;
pub mod inspect;
pub mod module;
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod pipeline;
pub mod sig;
pub mod sourcemap;
pub mod validate;
