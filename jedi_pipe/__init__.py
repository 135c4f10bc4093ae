"""jedi-pipe: multi-dataset semi-supervised video action recognition (JEDI), data-pipeline first."""
__version__ = "0.1.0"
