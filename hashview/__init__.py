"""HashView: content-based histopathology image retrieval with deep hashing."""

__version__ = "0.1.0"
