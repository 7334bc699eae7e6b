"""The storage contract and its backends: ``interfaces`` (the contract, small protocols by
concern), ``errors`` (every StoreError), ``rules`` (what every backend checks alike),
``runner`` (where store calls run: the reactor thread or a pool), ``search`` (SEARCH as
SQL), ``schema`` (SQLite schema and migrations), and the backends ``sqlite`` and
``memory``, each a package split by the same concerns."""
