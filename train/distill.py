"""Knowledge distillation from a trained network (Hinton et al., 2015): an option beyond the paper.

The teacher (any cg-train checkpoint, e.g. the 160-epoch plain ResNet-20) runs in eval mode with
every block computed; its logits are a fixed target. The term added to the loss is

    L_kd = T^2 KL(softmax(z_t / T) || softmax(z_s / T))

weighted by `lambda_distill`; T^2 keeps its gradient on the scale of the cross-entropy's. Gated
and static runs take the same term, so a comparison between them stays fair.
"""
import torch
import torch.nn.functional as F

from cosinegate.train import checkpoint


def load_teacher(path: str, device: torch.device) -> torch.nn.Module:
    """The teacher network, frozen, in eval mode on `device`."""
    teacher = checkpoint.build_model(checkpoint.load(path), path).to(device)
    teacher = teacher.to(memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(x, "full")[0].float()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(teacher || student) at temperature T, averaged over the batch."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher / t, dim=1),
                            reduction="batchmean", log_target=True)
