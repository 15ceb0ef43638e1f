"""``python -m streamflow.cli``: the same command as ``streamflow``."""

from streamflow.cli import app

if __name__ == "__main__":
    app()
