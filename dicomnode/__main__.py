from dicomnode.cli import main

raise SystemExit(main())
