"""Tasks: each owns its data, splits, collation, loss, metrics and head kind (see ``base.Task``)."""
