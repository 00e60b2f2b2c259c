"""IB-IUMAD Inspect: incremental unified RGB+depth anomaly detection served over HTTP."""

__version__ = "0.1.0"
