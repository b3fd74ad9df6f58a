"""dlor-scale: scaling studies for Diagonal-plus-Low-Rank networks.

Analysis entry point::

    import dlor_scale
    c = dlor_scale.curves("quickstart")          # name, study folder or spec file
    c["dlor_deep"].alpha, c["dlor_deep"].ci(), c.compare("dlor_deep", "dlor_wide")
"""

__version__ = "0.1.0"


def curves(study: str, tracking_uri: str | None = None, **kw):
    """Fitted scaling curves of a recorded study (a `dlor_scale.scaling.Curves`)."""
    from .analysis import load_curves
    return load_curves(study, tracking_uri, **kw)


__all__ = ["curves", "__version__"]
