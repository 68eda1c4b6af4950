"""Compute kernels: cpu.py (@njit). Import the module you need; this package imports nothing."""
