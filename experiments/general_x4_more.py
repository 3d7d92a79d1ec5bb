"""``general-x4``'s second stage: 1,000 more steps from the first stage's weights.

As ``general-x2``'s second stage (experiments/general_x2_more.py): the same data and damage
(``GENERAL_SPEC_X4``), 16 LR patches of 32 px, L1, Adam, the schedule restarted at a lower
peak (lr 3e-4, warmed up over 50 steps, cosine to 0). After its first stage (1,000 steps)
``general-x4`` was still below bicubic upscaling on clean bicubic LR and on ``bicubic >
noise(5)`` (experiments/prescribe.py --scale 4).

  python experiments/general.py --only general-x4      # both stages, score, pack
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the first stage's file beside this one
from general_x2 import second_stage  # noqa: E402
from general_x4 import get_config as first_stage  # noqa: E402


def get_config():
    return second_stage(first_stage(), 1_000)
