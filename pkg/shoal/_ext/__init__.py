"""Compiled hot paths, built from ext/*.pyx. Import them through shoal._native.load."""
