"""`must verify`: command (page, --labels, --list, --json), session (order, blind label pairs, undo), server (the
local page: 127.0.0.1, token, POST-only), log (verify.csv, fsynced), stats (the verified gain and its interval),
choice (--choose ships zero-shot or adapted, keeping the other)."""
