"""The version of this tokenwire (one place, so that no module imports the package root for it)."""

__version__ = "0.1.0"
