"""Experiment configs (ml_collections), one file per trainable model; shared defaults in base.py."""
