"""`train`: the Trainer's train loop, resumed or not, that never steps past max_steps."""

import logging
from typing import Any

log = logging.getLogger(__name__)


class AlreadyFinished(Exception):
    """Raised at train begin (callbacks.StopWhenFinished) when the resumed checkpoint already
    reached max_steps."""


def train(trainer: Any, resume: str | None) -> None:
    """`trainer.train`, except that a checkpoint already at max_steps trains no extra step: the
    Trainer would run one more before checking; `callbacks.StopWhenFinished` stops it first, after
    the checkpoint's weights and state are loaded."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except AlreadyFinished:
        log.info("%s is already at max_steps=%d: nothing left to train", resume, trainer.state.max_steps)
