from keepbook.keep.inside.server import main

raise SystemExit(main())
