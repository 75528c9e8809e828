"""Old home of the command line (console scripts of installs made before fsd.cli existed)."""

from fsd.cli.main import main, vhost_user_main

__all__ = ["main", "vhost_user_main"]
