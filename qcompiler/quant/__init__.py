"""Quantization arithmetic (grids, scales, zero points) and the plan of quantizers a compile carries."""
