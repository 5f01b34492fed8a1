"""``python -m hpsearch``: the same as the ``hpsearch`` command."""

from hpsearch.cli import app

if __name__ == "__main__":
    app(prog_name="hpsearch")
