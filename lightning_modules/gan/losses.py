"""The adversarial losses on the discriminator's logits, averaged over the batch: for each kind, the
discriminator's loss of (real logits, fake logits) and the generator's loss of the fake logits."""

from collections.abc import Callable

import torch
import torch.nn.functional as F


def non_saturating_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. (2014), eq. 1: -log D(x) - log(1 - D(G(z))); with D = sigmoid(l), -log D = softplus(-l)
    and -log(1 - D) = softplus(l)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def non_saturating_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. (2014), Sec. 3: -log D(G(z)) instead of log(1 - D(G(z))), which saturates early on."""
    return F.softplus(-fake_logits).mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Lim & Ye (2017); Miyato et al. (2018), eq. 17: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Miyato et al. (2018), eq. 17: -D(G(z))."""
    return -fake_logits.mean()


AdversarialLoss = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "non_saturating": (non_saturating_discriminator_loss, non_saturating_generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
}
