"""`python -m ropelime_server`: the MCP server (stdio by default; --http for streamable HTTP)."""

import sys

from ropelime_server.main import main

sys.exit(main())
