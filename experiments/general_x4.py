"""EDSR-baseline x4 for unknown damage: the built-in ``general-x4`` (issue 29).

``general-x2``'s recipe at x4 (experiments/general_x2.py): every training patch gets one of the
same seven chains, drawn uniformly, made on the device inside the train step from HR crops.
The blur sigmas are in HR pixels before the downscale, so they are doubled to do at x4 what
they do at x2 (an HR sigma of 1.2 before a x4 resize is a mild blur); noise and JPEG act on the
LR pixels and keep their ranges.

Data: as general-x2 (Sun80's photographs and the training posters, whole images, HR only).
Initialised from the built-in ``photo-x4`` (exported and imported as a checkpoint), then 1,000
steps of 16 LR patches of 32 px (HR 128 px), L1, Adam, lr 5e-4 warmed up over 50 steps then
cosine to 0: photo-x4's own fine-tuning length; then a second stage of 1,000 steps
(experiments/general_x4_more.py). Validated on Set5 with the training damage.

  python experiments/general.py            # data, init, train, score, pack (both models)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # general_x2.py beside this one
from general_x2 import GENERAL_SPEC, blurs_scaled, get_config as x2_config  # noqa: E402

GENERAL_SPEC_X4 = blurs_scaled(GENERAL_SPEC, 2)


def get_config():
    c = x2_config()
    c.name = "general_x4"
    c.model.scale = 4
    c.data.spec = GENERAL_SPEC_X4
    c.train.steps = 1_000
    c.train.init_from = "runs/general/init_photo-x4"
    return c
