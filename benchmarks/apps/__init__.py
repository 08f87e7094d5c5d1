"""The servers under test, one module per system; each is started by ``benchmarks.serve``."""
