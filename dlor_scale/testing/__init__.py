"""Test and developer infrastructure, not part of a study run: `harness` starts a local
multi-node Ray cluster with an MLflow server and PostgreSQL (``python -m dlor_scale.testing.harness``).
"""
