"""Training: configs, synthetic blur renderers, data, losses, the loop, resume and validation."""
