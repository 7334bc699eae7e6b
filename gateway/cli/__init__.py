"""The ``popgate`` command: one module per command group over the app layer."""
