"""``python -m dlor_scale.paper.report TARGET [--out DIR] [--tracking-uri URI] [--no-log]``."""

from .build import main

raise SystemExit(main())
