"""Stop a diverged run: one line naming the step, no checkpoint of non-finite weights.

What is really available to look at: transformers' `logging_nan_inf_filter` (on by default)
replaces a non-finite step loss by the average of the steps logged so far, before the loss is
accumulated, so the logged `loss` of a run whose weights are nan is a finite 0.0 (nothing was
added since the last log). The logged `grad_norm` is not filtered: it is the (pre-clip) norm the
Trainer computes at every optimizer step, for the step it is logged at. That is the signal:

- A step with a non-finite loss (nan activations, an overflow) back-propagates non-finite
  gradients, and a step that applies non-finite gradients leaves non-finite weights, whose every
  later step has a non-finite loss and gradient norm. So once training has gone non-finite, the
  gradient norm stays non-finite, and the next log sees it. (A step whose loss is nan only because
  no token in it is trained has zero gradients, changes nothing, and is rightly not divergence.)
- fp16 loss scaling skips a step whose scaled gradients overflowed, and lowers the scale: a
  routine event, not divergence; the weights are untouched. Such a step is recognized by the
  optimizer's `step_was_skipped` (accelerate) and its gradient norm not counted.
- The logged `loss` is checked too (an inf the filter let through, or a run with the filter off).

The check happens at log steps, with no extra device sync or collective (the log already
gathers the loss). So that no checkpoint (and no eval) ever follows an unchecked step, a step that
saves or evaluates also logs (`on_step_end`; this callback runs after those that decide to save,
DefaultFlowCallback and StopOnSignal): at most `logging_steps - 1` steps run past divergence, and
every checkpoint holds weights whose last step had a finite gradient norm. The logged values are
the same on every rank (the loss is gathered, the gradient norm is global), so every rank stops at
the same step. `run.run` then writes result.json with status "diverged" and exits non-zero.
"""

import math

from transformers import TrainerCallback

WATCHED = ("loss", "grad_norm")


class StopOnDivergence(TrainerCallback):
    def __init__(self) -> None:
        self.checked_at = 0  # last step whose logged values were finite
        self.diverged_at: int | None = None
        self.message: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_evaluate:
            control.should_log = True  # check this step before it is saved or evaluated
        return control

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if self.diverged_at is not None or not logs:
            return control
        bad = {
            k: logs[k] for k in WATCHED if isinstance(logs.get(k), int | float) and not math.isfinite(logs[k])
        }
        if "grad_norm" in bad and getattr(optimizer, "step_was_skipped", False):
            del bad["grad_norm"]  # fp16: the overflowed step was skipped, the weights are untouched
        if not bad:
            if any(k in logs for k in WATCHED):
                self.checked_at = state.global_step
            return control
        self.diverged_at = state.global_step
        values = " and ".join(f"{k} is {v}" for k, v in bad.items())
        self.message = (
            f"training diverged at step {state.global_step}: {values} (finite at step {self.checked_at}, the "
            "last check); stopped without saving it: lower optimizer.lr or raise optimizer.warmup_ratio"
        )
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # the Trainer logs, evaluates and saves once more at the end of each epoch (also after a
        # stop): save_strategy=epoch saves there, so the same check comes first
        if self.diverged_at is not None:
            control.should_save = False
            control.should_evaluate = False
        elif control.should_save or control.should_evaluate:
            control.should_log = True
        return control
