"""The vocabulary every layer shares: search criteria, sequence sets, flags, host rules.

Imports nothing else from ``gateway``; everything may import it.
"""
