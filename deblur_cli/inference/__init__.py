"""Running a generator over photos: tiling geometry, the tiled engine, runtimes, files to files."""
