"""What the adversarial finishing step does, from the run's ``-p`` options.

The step is not a method option: it runs on any method's output, after paste-back. Its options ride
on ``-p`` as the issue spells them (``-p adversarial=pgd -p adv_eps=8/255 -p adv_steps=20``) and are
taken out of the method's options here, so every method keeps its own small interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from anonymize.errors import AnonymizeError

AdversarialKind = Literal["fgsm", "pgd", "uap"]
ADVERSARIAL_KINDS: tuple[str, ...] = ("fgsm", "pgd", "uap")
OPTION_KEYS = ("adversarial", "adv_eps", "adv_steps", "adv_ensemble", "adv_samples", "adv_ssim")
ENSEMBLE_MEMBERS = ("dlib", "mobileface", "faceres")  # anonymize.adversarial.members
DEFAULT_ENSEMBLE = ("dlib", "mobileface")  # faceres, the strongest independent recogniser here, stays a judge
ADVERSARIAL_METHOD = "adversarial"  # --method adversarial: the identity crop, then this step (PGD unless told)


class AdversarialError(AnonymizeError, ValueError):
    """An adversarial option that cannot be used: one line naming it."""


@dataclass(frozen=True)
class AdversarialSettings:
    """kind: fgsm (one signed-gradient step of eps), pgd (``steps`` steps of 2.5 eps / steps, projected
    back into the eps ball each time, Madry et al.), uap (one perturbation for all faces,
    Moosavi-Dezfooli et al. 2017, fitted by sign-gradient passes); eps: the L-inf bound in [0, 1] image units (8/255: 8 grey
    levels). Every kind runs against ``ensemble`` under ``samples`` sampled attacker pipelines per step."""

    kind: AdversarialKind = "pgd"
    # 8/255: at 4/255 the ensemble attack (transformations sampled) left every face of celeba-ids matched by every
    # recogniser; at 8/255 it is the smallest bound that unmatches most faces for some (README's table)
    eps: float = 8 / 255
    steps: int = 10
    # the recognisers in the loss (each through its own alignment); those left out judge the release
    ensemble: tuple[str, ...] = DEFAULT_ENSEMBLE
    samples: int = 4  # attacker pipelines drawn per step (the first is the identity): anonymize.adversarial.transforms
    ssim_floor: float = 0.9  # the perturbation is scaled down until the face box's SSIM to the unperturbed image is at least this (0: off)

    def __post_init__(self) -> None:
        unknown = [name for name in self.ensemble if name not in ENSEMBLE_MEMBERS]
        if unknown or not self.ensemble or len(set(self.ensemble)) != len(self.ensemble):
            raise AdversarialError(f"adv_ensemble={','.join(self.ensemble)}: choose distinct names from {', '.join(ENSEMBLE_MEMBERS)}")
        if self.samples < 1:
            raise AdversarialError(f"adv_samples={self.samples}: expected at least 1")
        if not 0 <= self.ssim_floor < 1:
            raise AdversarialError(f"adv_ssim={self.ssim_floor:g}: expected 0 <= floor < 1 (0: no floor)")
        if self.kind not in ADVERSARIAL_KINDS:
            raise AdversarialError(f"adversarial={self.kind!r}: choose one of {', '.join(ADVERSARIAL_KINDS)}")
        if not 0 < self.eps <= 1:
            raise AdversarialError(f"adv_eps={self.eps:g}: expected 0 < eps <= 1 (image units; 4/255 is 4 grey levels)")
        if self.steps < 1:
            raise AdversarialError(f"adv_steps={self.steps}: expected at least 1")

    @property
    def eps_levels(self) -> float:
        """The bound in 8-bit grey levels (the unit the images are perturbed in)."""
        return self.eps * 255.0


def split_adversarial_options(options: Mapping[str, str], method: str) -> tuple[dict[str, str], AdversarialSettings | None]:
    """(the method's own options, the adversarial settings or None) from ``-p`` KEY=VALUE options.

    ``--method adversarial`` without ``adversarial=`` means PGD; ``adv_eps``/``adv_steps`` without a
    kind is an error rather than a silent no-op.
    """
    own = {key: value for key, value in options.items() if key.replace("-", "_") not in OPTION_KEYS}
    given = {key.replace("-", "_"): value for key, value in options.items() if key.replace("-", "_") in OPTION_KEYS}
    kind = given.get("adversarial")
    if kind is None and method == ADVERSARIAL_METHOD:
        kind = "pgd"
    if kind is None:
        if given:
            raise AdversarialError(f"{', '.join(sorted(given))}: give -p adversarial=fgsm|pgd|uap as well")
        return own, None
    kind = kind.strip().lower()
    if kind not in ADVERSARIAL_KINDS:
        raise AdversarialError(f"adversarial={kind!r}: choose one of {', '.join(ADVERSARIAL_KINDS)}")
    eps = _fraction(given["adv_eps"], "adv_eps") if "adv_eps" in given else AdversarialSettings.eps
    steps = _integer(given, "adv_steps", AdversarialSettings.steps)
    samples = _integer(given, "adv_samples", AdversarialSettings.samples)
    ensemble = tuple(name.strip() for name in given["adv_ensemble"].split(",") if name.strip()) if "adv_ensemble" in given else DEFAULT_ENSEMBLE
    ssim_floor = _fraction(given["adv_ssim"], "adv_ssim") if "adv_ssim" in given else AdversarialSettings.ssim_floor
    return own, AdversarialSettings(kind, eps, steps, ensemble, samples, ssim_floor)  # type: ignore[arg-type]


def _integer(given: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(given[key]) if key in given else default
    except ValueError:
        raise AdversarialError(f"{key}={given[key]!r}: expected an integer") from None


def _fraction(raw: str, key: str) -> float:
    """``4/255`` or ``0.0157``."""
    try:
        return float(Fraction(raw.strip()))
    except (ValueError, ZeroDivisionError):
        raise AdversarialError(f"{key}={raw!r}: expected a number or a fraction such as 4/255") from None
