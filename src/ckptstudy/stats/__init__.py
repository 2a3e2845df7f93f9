"""Statistics over prompts and steps: bootstrap intervals, concentration of effect vectors, onsets."""
