"""``general-x2``'s second stage: 2,000 more steps from the first stage's weights.

The first stage (experiments/general_x2.py, 1,500 steps) was still gaining on its validation
(Set5 under the training damage) when its cosine schedule reached 0. This stage restarts the
schedule from its weights with a lower peak: the same data, the same damage (``GENERAL_SPEC``),
16 LR patches of 32 px, L1, Adam, lr 3e-4 warmed up over 50 steps then cosine to 0. Set5 under
the training damage (one chain per image): 29.41 dB after the first stage, 29.74 at step 1,500
of this one, 29.70 at its end.

  python experiments/general.py            # both stages, score, pack
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the first stage's file beside this one
from general_x2 import get_config as first_stage, second_stage  # noqa: E402


def get_config():
    return second_stage(first_stage(), 2_000)
