"""memscan: find mislabeled, atypical and memorized samples from one short training run."""
__version__ = "0.1.0"
