"""The built-in families' own reference denoisers (SCIENCE.md §5), each a
``tbcore.ReferenceDenoiser`` that a family's ``reference_denoisers()`` hands to the study:

* ``wiener``: the Gaussian field's exact posterior mean, and the blind optimum;
* ``calpha``: the C^α oracle (given the contour) and the contour estimator (upper bound);
* ``disks``: the shape posterior (importance sampling), the full and partial oracles;
* ``empirical``: the exact MMSE of a finite data set (uniform on its images);
* ``conjugate``: ``P f P⁻¹``, a base family's denoiser on its pixel-shuffled version.
"""
