from keepbook.keep.wasmldr.server import main

raise SystemExit(main())
