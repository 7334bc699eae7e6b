"""popgate's benchmark harness: popgate measured side by side with Dovecot, getmail6,
fetchmail and mbsync on the same data, in the same run (``make bench`` / ``python -m bench``).

Not part of the test suite: it takes minutes, depends on the machine's speed and asserts
nothing; it prints one table of figures, ratios and the targets of issue #9. See
bench/README.md for the latest table and how to repeat it.
"""
