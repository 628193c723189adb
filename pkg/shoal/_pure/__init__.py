"""Pure-Python twins of the compiled modules in shoal._ext: same names, same API, same results."""
