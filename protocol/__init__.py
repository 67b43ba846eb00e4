"""pol protocol: the rules of SPEC.md as pure code (SPEC.md is normative; this follows it).

Nothing in this package performs I/O, reads the clock or logs: every input, including the
current time, is an argument. Other implementations and auditors read this package
side by side with SPEC.md.
"""
