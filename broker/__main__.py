"""`python -m broker`: the server's commands (`serve`, `check-config`,
`tokens`), as `broker` runs them."""

from broker.commands import main

raise SystemExit(main())
