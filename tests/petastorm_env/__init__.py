"""Scripts the compatibility suite runs in the petastorm environment (.venv-petastorm)."""
