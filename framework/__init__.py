"""The experiment framework around the C3A adapter: methods, tasks, models, trainer, results, tables.

``c3a`` (the adapter) never imports this package; this package uses ``c3a`` like any other method.
"""
