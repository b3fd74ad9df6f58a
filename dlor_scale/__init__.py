"""dlor-scale: scaling studies for Diagonal-plus-Low-Rank networks."""

__version__ = "0.1.0"
