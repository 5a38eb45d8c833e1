"""derm: hyperparameter sweeps for dermoscopy deep learning on Ray Tune."""

__version__ = "0.1.0"
