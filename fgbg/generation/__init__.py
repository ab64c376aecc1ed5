"""Long-video generation: inputs, driving motion, camera presets, and the clip-by-clip predict loop."""
