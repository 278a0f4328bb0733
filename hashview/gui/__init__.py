"""The HashView desktop app (Qt). It only calls the Qt-free core in ``hashview``."""
