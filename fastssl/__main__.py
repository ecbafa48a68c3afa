from fastssl.cli import main

raise SystemExit(main())
