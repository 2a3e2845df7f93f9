"""Forward passes and what they read: hooked capture, fused attention statistics, generation, ablation,
residual taps, loop detection, token classes."""
