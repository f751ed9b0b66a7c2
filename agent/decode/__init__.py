"""Pure decoders: kernel bytes in, records out. No I/O here."""
