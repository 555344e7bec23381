"""``python -m peer``: the same as the ``meshpeer`` command."""

from __future__ import annotations

from peer.cli import main

raise SystemExit(main())
