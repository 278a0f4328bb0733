"""Seeded fuzzing of the files HashView opens: libraries, model files and index sidecars.

``python -m tests.fuzz.fuzz_inputs --help`` runs it; ``tests/test_fuzz.py`` runs it as a test.
"""
