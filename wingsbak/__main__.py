from wingsbak.cli import main

raise SystemExit(main())
