from cslaws.bench.cli import main

raise SystemExit(main())
