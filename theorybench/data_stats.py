"""Statistics of a distribution's images that the bounds take as inputs:
:func:`data_variance`, the spread about the pixel mean in the KL bound's closing term
(SCIENCE.md §4b). The reference cells store it; a module of its own, so that editing it
recomputes those cells only (``experiments.keys.COMPONENTS``).
"""

from __future__ import annotations

import math

from tbcore.validation import check_int, check_seed


def data_variance(dist, n: int = 256, seed: int = 0) -> tuple[float, float, float]:
    """``E‖x − μ̂‖²`` (summed over the pixels of one image) for μ̂ the scalar pixel mean of
    ``n`` images of ``dist`` (seed ``seed``): the input of :func:`theorybench.kl.closing_term`.

    The mean of ``‖x_i − μ̂‖²`` over the same images plus ``2d·Var(μ̂)`` (Var from the
    spread of the per-image means): fitting μ̂ on the images lowers the mean by ``d·Var(μ̂)``
    in expectation, and a fixed μ̂ raises the population value by as much. Returns
    ``(value, standard error of the mean, μ̂)``.
    """
    n, seed = check_int("n", n, low=2), check_seed(seed)
    x = dist.sample(n, seed).double().flatten(1)
    mu = float(x.mean())
    dev = (x - mu).pow(2).sum(1)
    var_mu = float(x.mean(1).var()) / n
    return (float(dev.mean()) + 2 * x.shape[1] * var_mu, float(dev.std() / math.sqrt(n)), mu)
