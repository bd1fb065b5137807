"""LRA-diffusion building blocks: one module per concern (see README)."""
