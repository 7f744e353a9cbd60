"""Is a difference between two test accuracies more than the noise of the test set?

Paired: an exact McNemar test on the images only one of two models gets right (both evaluated on
the same images, per-image correctness kept by `cg-bench`). Unpaired: the 95 % interval of a
difference of two binomial proportions, for benches without per-image results.
"""
import math
from dataclasses import dataclass

SIGNIFICANCE = 0.05  # a difference counts when the two-sided p-value is below this


@dataclass(frozen=True)
class McNemar:
    images: int   # images both models were evaluated on
    only_a: int   # images only model a gets right
    only_b: int   # images only model b gets right
    p: float      # exact two-sided p-value

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE


def mcnemar(a: str, b: str) -> McNemar:
    """Exact two-sided McNemar test from two per-image correctness strings ('1' right, '0' wrong)."""
    if len(a) != len(b):
        raise ValueError(f"per-image results of different lengths: {len(a)} and {len(b)}")
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    return McNemar(len(a), only_a, only_b, _exact_p(only_a, only_b))


def mcnemar_pooled(tests: list[McNemar]) -> McNemar:
    """One exact McNemar test over several pairs of models (one pair per training seed): under the
    null each discordant image, whichever pair it comes from, is as likely to favour either model,
    so the discordant counts add."""
    only_a, only_b = sum(t.only_a for t in tests), sum(t.only_b for t in tests)
    return McNemar(sum(t.images for t in tests), only_a, only_b, _exact_p(only_a, only_b))


def _exact_p(only_a: int, only_b: int) -> float:
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n) if n else 1.0


def unpaired_noise(acc_a: float, images_a: int, acc_b: float, images_b: int) -> float:
    """Half-width of the 95 % interval of a difference of two test accuracies, treating each as a
    binomial proportion over its own images (on the same images a paired test is sharper)."""
    return 1.96 * math.sqrt(acc_a * (1 - acc_a) / images_a + acc_b * (1 - acc_b) / images_b)
