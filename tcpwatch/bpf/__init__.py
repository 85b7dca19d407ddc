"""The eBPF C program, shipped as package data."""
