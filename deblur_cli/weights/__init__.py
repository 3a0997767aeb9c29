"""Weight files, checkpoints, the manifest of named models, the Hub, export and publishing."""
