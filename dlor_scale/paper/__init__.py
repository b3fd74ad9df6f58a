"""Reproduction of arXiv 2605.05659: the paper's explicit constructions (`construct`) and the
reports that check its claims (`report`, ``dlor-scale report`` / ``python -m dlor_scale.paper.report``).

Kept apart from the service pipeline: nothing under `dlor_scale` outside this package imports
it except the CLI's ``report`` command.
"""
