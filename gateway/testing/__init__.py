"""Fakes and real-peer harnesses shipped with the product: used by tests, bench and demo alike."""
