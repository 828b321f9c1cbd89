"""The benchmark's sections, one module each, in the order `--sections` lists them.

A section module has a docstring (first line: the one-line summary `--list` prints; the rest: what it
measures, shown by --help), NAME (the --sections name), DEFAULT (runs without --sections), TOOLS (the
header prints the wasmfix and wasm-opt versions and the RSS floor), and run(ctx) -> dict, which prints
its tables and returns its figures (they go into --json under sections.NAME).
"""
import importlib

# To add a section: write bench/sections/NAME.py and add its module name here.
MODULES = ["core", "fpcast", "stack", "dwarf", "harden", "heap", "ruby_sanity", "preview2", "pyodide", "fpcast_designs"]

SECTIONS = {}
for _module in MODULES:
    _section = importlib.import_module("sections." + _module)
    SECTIONS[_section.NAME] = _section
