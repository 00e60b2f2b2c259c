"""The ground floor every package may import: deployment settings, the name patterns, and the rule
that no process outlives its parent. It imports nothing of ours but `model` (the presets and limits
the settings default to)."""

__version__ = "0.1.0"  # the release: the same as pyproject.toml's version (a test checks)
