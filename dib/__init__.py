"""dib: an element-based OS image builder, format-compatible with diskimage-builder."""

__version__ = "0.1.0"
