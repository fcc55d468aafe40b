from regnet.cli import main

raise SystemExit(main())
