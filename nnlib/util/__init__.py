"""Small helpers with no nnlib dependencies: timing, BLAS threads, the machine's description, shipping the package."""
