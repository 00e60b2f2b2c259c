"""IB-IUMAD Inspect: incremental unified RGB+depth anomaly detection served over HTTP."""

from core import __version__

__all__ = ["__version__"]
