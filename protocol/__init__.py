"""pol protocol: the normative spec as pure code (see SPEC.md).

Nothing in this package performs I/O, reads the clock or logs: every input, including the
current time, is an argument. Other implementations and auditors read this package
side by side with SPEC.md.
"""
