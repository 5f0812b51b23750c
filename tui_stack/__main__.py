from tui_stack.cli import main

raise SystemExit(main())
