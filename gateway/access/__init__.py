"""Who may see which mail: per-user views of the store (household sharing, quotas)."""
