"""MoE video models registered with transformers' Auto classes."""
