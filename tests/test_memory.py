"""Peak memory of a deblur grows with the photo's width, not its area (issue 21, section 5).

The photo stays in its 8-bit levels, tiles become float as they are cut, and finished rows leave
the float band as levels again: 3 bytes a pixel in, 3 out, plus a band about one tile high. The
float path it replaced held the photo as float32 in and out, 24 bytes a pixel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# A child process, so ru_maxrss is this deblur's high-water mark alone; the baseline is taken after
# the imports and a warm-up run (allocator arenas, kernels), just before the photo is made.
CHILD = """
import json, resource, sys, torch
from torch import nn
from deblur_cli.inference.engine import deblur

torch.set_num_threads(1)
height, width = int(sys.argv[1]), int(sys.argv[2])
model = nn.Conv2d(3, 3, 1).eval()  # pointwise: the run costs tiles and bands, not network time
deblur(model, torch.zeros(1, 3, 600, width // 8, dtype=torch.uint8), tile=256, overlap=32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
photo = torch.full((1, 3, height, width), 100, dtype=torch.uint8)
out = deblur(model, photo, tile=256, overlap=32, batch_size=4)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"bytes_per_pixel": (peak - base) * 1024 / (height * width), "dtype": str(out.dtype)}))
"""


def peak_bytes_per_pixel(height: int, width: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(height), str(width)], capture_output=True, text=True,
                          env=env, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_a_16_megapixel_8bit_photo_costs_under_12_bytes_a_pixel() -> None:
    """uint8 in and out (6 bytes a pixel) plus the band: the whole-photo float path needed 24 or more."""
    result = peak_bytes_per_pixel(4000, 4000)
    assert result["dtype"] == "torch.uint8"
    assert result["bytes_per_pixel"] < 12, result  # measured 8.8 (old float path: 31)
