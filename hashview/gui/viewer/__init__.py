"""The whole-slide viewer widget: ``SlideViewer`` (see ``widget.py``) and its helpers."""

from .overview import magnification_text, scale_bar
from .widget import SlideViewer

__all__ = ["SlideViewer", "magnification_text", "scale_bar"]
