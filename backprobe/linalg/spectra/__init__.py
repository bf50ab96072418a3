"""Eigenvalues: top eigenpairs (Lanczos, subspace iteration) and spectral density (SLQ)."""

from backprobe.linalg.spectra.lanczos import Eigenpairs, lanczos, top_eigenpairs
from backprobe.linalg.spectra.slq import SpectralDensity, spectral_density

__all__ = ["Eigenpairs", "SpectralDensity", "lanczos", "spectral_density", "top_eigenpairs"]
