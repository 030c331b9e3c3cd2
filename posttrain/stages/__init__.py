"""One small module per stage kind: wires data + models + engine + losses; no math here."""
