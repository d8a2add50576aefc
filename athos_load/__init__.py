"""athos-load: load and soak testing for the Athos AI roleplay platform."""

__version__ = "0.1.0"
