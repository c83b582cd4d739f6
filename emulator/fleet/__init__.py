"""Fleet simulation: many handsets, 2009-era radio links, server events, and a readable report."""
