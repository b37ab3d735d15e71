from xdna_ep.cli import main

raise SystemExit(main())
