"""Forward passes with BatchNorm in batch-statistics mode that leave the running statistics untouched.

Used for the passes the references run with BatchNorm "frozen" (USB's `bn_controller.freeze_bn`, the TF
MixMatch code's skipped update ops): label guessing (MixMatch, ReMixMatch), VAT's perturbed passes, and the
Mean Teacher / ICT teacher. The model is called through `torch.func.functional_call` with *copies* of its
buffers, so BatchNorm normalises with this batch's statistics and writes its running averages into the
copies, which are dropped. No module state changes, nothing to restore, and `torch.compile(fullgraph=True)`
traces it (tested). Parameters are the model's own, so gradients reach them when grad mode is on.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call


def forward_batch_stats(model: nn.Module, x: Tensor) -> Tensor:
    """`model(x)` in training mode (BatchNorm on batch statistics), running statistics left as they were.

    A model in eval mode (the EMA teacher) is switched to training mode for this call only: Mean Teacher's
    and ICT's reference code run the teacher in training mode, and the teacher's running statistics are a
    copy of the *student's* (`EMATeacher.update`), which do not match the averaged weights early in training.
    """
    was_training = model.training
    model.train()
    try:
        state = {**dict(model.named_parameters()), **{k: b.clone() for k, b in model.named_buffers()}}
        return functional_call(model, state, (x,))
    finally:
        model.train(was_training)
