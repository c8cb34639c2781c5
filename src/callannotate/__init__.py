"""CallAnnotate: self-hosted annotation of call recordings."""

__version__ = "0.1.0"
